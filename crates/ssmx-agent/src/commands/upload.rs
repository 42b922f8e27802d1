//! Whole outputs the gateway did not take when their step finished (it was down, say): kept on
//! disk and uploaded again with back-off until the gateway takes them, or until they are as old
//! as a reply may be ([`Timing::reply_max_age`]), so the full output is served at the
//! invocation's output URL once the gateway is back.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use ssmx_protocol::message::now_millis;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::state::Store;
use crate::config::Timing;
use crate::gateway_api::GatewayApi;

/// One stream of one plugin's output waiting for the gateway; its bytes are in a file beside.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct PendingUpload {
    /// Names its files.
    pub(crate) id: Uuid,
    /// The command.
    pub(crate) command_id: String,
    /// The plugin (step) id.
    pub(crate) plugin: String,
    /// `stdout` or `stderr`.
    pub(crate) stream: String,
    /// When the step finished, Unix milliseconds.
    pub(crate) created_ms: u64,
}

impl PendingUpload {
    /// A new pending upload of `stream` of `plugin`.
    pub(crate) fn new(command_id: &str, plugin: &str, stream: &str) -> Self {
        Self {
            id: Uuid::new_v4(),
            command_id: command_id.to_owned(),
            plugin: plugin.to_owned(),
            stream: stream.to_owned(),
            created_ms: now_millis(),
        }
    }
}

/// Uploads what `store` holds and what arrives on `new`, retrying with
/// [`Timing::upload_retry_backoff`], until `shutdown`.
pub(crate) async fn retry(
    api: Arc<GatewayApi>,
    store: Store,
    mut new: mpsc::UnboundedReceiver<PendingUpload>,
    timing: Timing,
    shutdown: CancellationToken,
) {
    let max_age = u64::try_from(timing.reply_max_age.as_millis()).unwrap_or(u64::MAX);
    let mut pending = store.uploads();
    let mut delays = timing.upload_retry_backoff.start();
    loop {
        let mut left = Vec::new();
        for upload in pending {
            if now_millis().saturating_sub(upload.created_ms) > max_age {
                tracing::warn!(command = %upload.command_id, plugin = %upload.plugin, stream = %upload.stream, "whole output never uploaded; dropped");
                store.remove_upload(upload.id);
                continue;
            }
            let data = match store.upload_data(upload.id) {
                Ok(data) => data,
                Err(e) => {
                    tracing::warn!(command = %upload.command_id, "kept output unreadable; dropped: {e}");
                    store.remove_upload(upload.id);
                    continue;
                }
            };
            let sent = tokio::select! {
                sent = api.upload_command_output(
                    &upload.command_id,
                    &upload.plugin,
                    &upload.stream,
                    data,
                ) => sent,
                // Kept on disk: the next start retries it.
                () = shutdown.cancelled() => return,
            };
            match sent {
                Ok(()) => {
                    tracing::info!(command = %upload.command_id, plugin = %upload.plugin, stream = %upload.stream, "whole output uploaded after a retry");
                    store.remove_upload(upload.id);
                }
                Err(e) => {
                    tracing::debug!(command = %upload.command_id, "whole output upload failed again: {e}");
                    left.push(upload);
                }
            }
        }
        pending = left;
        let wait = if pending.is_empty() {
            delays.reset();
            None
        } else {
            Some(delays.next_delay())
        };
        let pause = async {
            match wait {
                Some(delay) => tokio::time::sleep(delay).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            arrived = new.recv() => match arrived {
                Some(upload) => pending.push(upload),
                None => return,
            },
            () = pause => {}
            () = shutdown.cancelled() => return,
        }
    }
}
