//! Local listeners for port sessions: accept connections (TCP or Unix socket) and carry each
//! through the session, with the official client's status texts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ssmx_client::{PortForwarder, PortMode, PortNotice, SessionEnd};
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::task::JoinSet;

use super::{Ui, TERMINATE_TIMEOUT};

/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Where to listen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAt {
    /// A TCP address: host (name or IP) and port (0 for any free port).
    Tcp {
        /// Host name or address.
        host: String,
        /// Port, 0 for any.
        port: u16,
    },
    /// A Unix socket path.
    Unix(PathBuf),
}

/// A bound local listener.
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix socket, removed again when the listener is dropped.
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Binds `at`.
    pub async fn bind(at: &ListenAt) -> anyhow::Result<Listener> {
        match at {
            ListenAt::Tcp { host, port } => {
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let listener = TcpListener::bind((host, *port))
                    .await
                    .with_context(|| format!("cannot listen on {host} port {port}"))?;
                Ok(Listener::Tcp(listener))
            }
            ListenAt::Unix(path) => {
                let listener = UnixListener::bind(path)
                    .with_context(|| format!("cannot listen on Unix socket {}", path.display()))?;
                Ok(Listener::Unix(listener, path.clone()))
            }
        }
    }

    /// The local port number or socket path, as the session's `localPortNumber` /
    /// `localUnixSocket` would name it.
    pub fn local_name(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.port().to_string())
                .unwrap_or_default(),
            Listener::Unix(_, path) => path.display().to_string(),
        }
    }

    /// The official client's "opened" line (without the newline).
    fn opened_text(&self, session_id: &str) -> String {
        match self {
            Listener::Tcp(_) => format!(
                "Port {} opened for sessionId {session_id}.",
                self.local_name()
            ),
            Listener::Unix(_, path) => {
                format!(
                    "Unix socket {} opened for sessionId {session_id}.",
                    path.display()
                )
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            // The socket file is ours; a failure leaves a stale file, which bind reports later.
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Accepts connections on `listener` and forwards each through the session until the session
/// ends. Prints the official client's texts.
pub async fn serve(
    forwarder: Arc<PortForwarder>,
    listener: Listener,
    ui: Ui,
) -> anyhow::Result<SessionEnd> {
    let session_id = forwarder.session_id().to_owned();
    let opened = listener.opened_text(&session_id);
    let multiplexed = matches!(forwarder.mode(), PortMode::Multiplexed { .. });
    if multiplexed {
        ui.status(&format!("{opened}\nWaiting for connections...\n"));
    } else {
        ui.status(&format!("{opened}\n"));
    }
    let mut notices = forwarder.subscribe();
    let mut connections = JoinSet::new();
    let mut announced = false;
    loop {
        tokio::select! {
            end = forwarder.closed() => return Ok(end?),
            accepted = accept(&listener) => match accepted {
                Ok(conn) => {
                    if !announced {
                        announced = true;
                        if multiplexed {
                            ui.status(&format!("\nConnection accepted for session [{session_id}]\n"));
                        } else {
                            ui.status(&format!("Connection accepted for session {session_id}.\n"));
                        }
                    }
                    let forwarder = forwarder.clone();
                    connections.spawn(async move {
                        match conn {
                            Conn::Tcp(s) => forwarder.forward(s).await,
                            Conn::Unix(s) => forwarder.forward(s).await,
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("accepting a local connection failed: {e}");
                    tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                }
            },
            Ok(notice) = notices.recv() => {
                if notice == PortNotice::ConnectToPortError {
                    ui.status("\nConnection to destination port failed, check SSM Agent logs.\n");
                }
            }
            Some(done) = connections.join_next() => {
                if let Ok(Err(e)) = done {
                    tracing::info!("forwarded connection ended with an error: {e}");
                }
            }
        }
    }
}

enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> std::io::Result<Conn> {
    match listener {
        Listener::Tcp(l) => {
            let (s, peer) = l.accept().await?;
            tracing::debug!(%peer, "connection accepted");
            // Interactive protocols through the tunnel want small writes sent at once.
            let _ = s.set_nodelay(true);
            Ok(Conn::Tcp(s))
        }
        Listener::Unix(l, _) => Ok(Conn::Unix(l.accept().await?.0)),
    }
}

/// The signals that end a port session from the keyboard or from outside: SIGINT, SIGQUIT
/// (the official client's control signals), SIGTERM and SIGHUP.
pub struct ControlSignals {
    signals: [Signal; 4],
}

impl ControlSignals {
    /// Starts watching.
    pub fn watch() -> std::io::Result<ControlSignals> {
        Ok(ControlSignals {
            signals: [
                signal(SignalKind::interrupt())?,
                signal(SignalKind::quit())?,
                signal(SignalKind::terminate())?,
                signal(SignalKind::hangup())?,
            ],
        })
    }

    /// Resolves when one arrives.
    pub async fn recv(&mut self) {
        let [a, b, c, d] = &mut self.signals;
        tokio::select! {
            _ = a.recv() => {}
            _ = b.recv() => {}
            _ = c.recv() => {}
            _ = d.recv() => {}
        }
    }
}

/// Ends a port session from this side, within [`TERMINATE_TIMEOUT`].
pub async fn terminate(forwarder: &PortForwarder) {
    match tokio::time::timeout(TERMINATE_TIMEOUT, forwarder.terminate()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("ending session {}: {e}", forwarder.session_id()),
        Err(_) => tracing::warn!("ending session {} timed out", forwarder.session_id()),
    }
}
