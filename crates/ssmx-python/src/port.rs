//! `PortForward`: a local TCP listener whose connections are carried through a Port session.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use ssmx_client::PortForwarder;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::errors::{within, Failure, Reply};
use crate::manager::{open_session, EndOnDrop};
use crate::{Done, CLOSE_TIMEOUT, TERMINATE_TIMEOUT};

/// Document for forwarding to a port of the target itself.
const PORT_DOCUMENT: &str = "AWS-StartPortForwardingSession";
/// Document for forwarding to a host reachable from the target.
const REMOTE_HOST_DOCUMENT: &str = "AWS-StartPortForwardingSessionToRemoteHost";
/// The local address the listener binds: forwarded ports are for this machine only, as with
/// the official plugin.
const LOCAL_ADDRESS: &str = "127.0.0.1";

/// What [`crate::manager::SessionManager::port_forward`] was asked for.
pub(crate) struct Request {
    pub target: String,
    pub remote_port: u16,
    pub local_port: u16,
    pub host: Option<String>,
}

/// How the forwarding ended.
type Outcome = Option<Result<(), Failure>>;

/// A forwarded port (from :meth:`SessionManager.port_forward`).
///
/// Connect to ``127.0.0.1:local_port``; each connection is carried through the session to the
/// remote port. :meth:`close` stops listening, drops open connections and ends the session;
/// ``await wait_closed()`` waits until that is done (or until the session ends on its own).
/// ``async with`` does both on exit, and so does garbage collection of the object.
#[pyclass(frozen, module = "ssmx")]
pub(crate) struct PortForward {
    local_port: u16,
    session_id: String,
    target: String,
    close: watch::Sender<bool>,
    outcome: watch::Receiver<Outcome>,
}

impl PortForward {
    /// Binds the local port, starts the session, waits for its handshake and starts serving.
    pub(crate) async fn open(
        client: ssmx_client::SessionManager,
        request: Request,
        timeout: Option<Duration>,
    ) -> Result<PortForward, Failure> {
        let listener = TcpListener::bind((LOCAL_ADDRESS, request.local_port)).await?;
        let local_port = listener.local_addr()?.port();
        let mut parameters = HashMap::from([
            (
                "portNumber".to_owned(),
                vec![request.remote_port.to_string()],
            ),
            ("localPortNumber".to_owned(), vec![local_port.to_string()]),
        ]);
        let document = match request.host {
            Some(host) => {
                parameters.insert("host".to_owned(), vec![host]);
                REMOTE_HOST_DOCUMENT
            }
            None => PORT_DOCUMENT,
        };
        let forwarder = within(timeout, "starting the port session", async {
            let session =
                open_session(&client, &request.target, Some(document), parameters).await?;
            let guard = EndOnDrop::new(&client, session.id());
            let forwarder = PortForwarder::new(session).await?;
            guard.disarm();
            Ok(forwarder)
        })
        .await?;
        let session_id = forwarder.session_id().to_owned();
        let (close, close_requested) = watch::channel(false);
        let (outcome_tx, outcome) = watch::channel(None);
        let span = tracing::info_span!("port_forward", session_id = %session_id, local_port);
        tokio::spawn(
            async move {
                let result = serve(Arc::new(forwarder), listener, close_requested, &client).await;
                outcome_tx.send_replace(Some(result));
            }
            .instrument(span),
        );
        Ok(PortForward {
            local_port,
            session_id,
            target: request.target,
            close,
            outcome,
        })
    }
}

impl Drop for PortForward {
    /// Nobody can use the port any more: stop serving and end the session (bounded by
    /// [`CLOSE_TIMEOUT`] and [`TERMINATE_TIMEOUT`]).
    fn drop(&mut self) {
        self.close.send_replace(true);
    }
}

#[pymethods]
impl PortForward {
    /// The local TCP port (on 127.0.0.1) that is forwarded.
    #[getter]
    fn local_port(&self) -> u16 {
        self.local_port
    }

    /// The port session's id.
    #[getter]
    fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The target the session runs on.
    #[getter]
    fn target(&self) -> &str {
        &self.target
    }

    /// Whether forwarding has stopped (closed, or the session ended).
    #[getter]
    fn closed(&self) -> bool {
        self.outcome.borrow().is_some()
    }

    /// Stops listening, drops open connections and ends the session. Returns at once; await
    /// :meth:`wait_closed` to know when it is done.
    fn close(&self) {
        self.close.send_replace(true);
    }

    /// Waits until forwarding has stopped; raises if the session failed.
    fn wait_closed<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let outcome = self.outcome.clone();
        crate::coroutine(py, "PortForward.wait_closed", async move {
            Ok(Reply(finished(outcome).await.map(|()| Done)))
        })
    }

    fn __aenter__<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.unbind();
        crate::coroutine(py, "PortForward.__aenter__", async move { Ok(this) })
    }

    #[pyo3(signature = (exc_type, _exc_value, _traceback))]
    fn __aexit__<'py>(
        &self,
        py: Python<'py>,
        exc_type: &Bound<'py, PyAny>,
        _exc_value: &Bound<'py, PyAny>,
        _traceback: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let body_failed = !exc_type.is_none();
        self.close.send_replace(true);
        let outcome = self.outcome.clone();
        crate::coroutine(py, "PortForward.__aexit__", async move {
            let closed = match finished(outcome).await {
                // The body's exception is the one that matters.
                Err(e) if body_failed => {
                    tracing::debug!("port forwarding ended after an error: {e}");
                    Ok(false)
                }
                other => other.map(|()| false),
            };
            Ok(Reply(closed))
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "PortForward(local_port={}, session_id={:?}, target={:?})",
            self.local_port, self.session_id, self.target
        )
    }
}

/// Resolves when the serving task has finished.
async fn finished(mut outcome: watch::Receiver<Outcome>) -> Result<(), Failure> {
    match outcome.wait_for(Option::is_some).await {
        Ok(value) => value.clone().unwrap_or(Ok(())),
        // The task is gone without a word: nothing is running any more.
        Err(_) => Ok(()),
    }
}

/// Accepts local connections and forwards each until a close is requested (or the owner is
/// gone) or the session ends. Connections are owned by a [`JoinSet`]: none outlives this.
async fn serve(
    forwarder: Arc<PortForwarder>,
    listener: TcpListener,
    mut close_requested: watch::Receiver<bool>,
    client: &ssmx_client::SessionManager,
) -> Result<(), Failure> {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = close_requested.wait_for(|closing| *closing) => break,
            ended = forwarder.closed() => {
                tracing::debug!(?ended, "port session ended");
                return ended.map(drop).map_err(Failure::from);
            }
            accepted = listener.accept() => match accepted {
                Ok((conn, peer)) => {
                    if let Err(e) = conn.set_nodelay(true) {
                        tracing::debug!(%peer, "cannot set TCP_NODELAY: {e}");
                    }
                    let forwarder = forwarder.clone();
                    connections.spawn(async move {
                        if let Err(e) = forwarder.forward(conn).await {
                            tracing::info!(%peer, "forwarded connection failed: {e}");
                        }
                    }.instrument(tracing::debug_span!("connection", %peer)));
                }
                Err(e) => tracing::warn!("accepting a local connection failed: {e}"),
            },
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = done {
                    tracing::warn!("a forwarded connection task failed: {e}");
                }
            }
        }
    }
    drop(listener);
    connections.shutdown().await;
    match tokio::time::timeout(TERMINATE_TIMEOUT, forwarder.terminate()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::info!("ending the port session failed: {e}"),
        Err(_) => tracing::info!("ending the port session timed out"),
    }
    if tokio::time::timeout(CLOSE_TIMEOUT, forwarder.closed())
        .await
        .is_err()
    {
        // The agent did not end the session on the flag: ask the service.
        tracing::info!("the port session did not end; calling TerminateSession");
        match tokio::time::timeout(
            TERMINATE_TIMEOUT,
            client.terminate_session(forwarder.session_id()),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("TerminateSession failed: {e}"),
            Err(_) => tracing::warn!("TerminateSession timed out"),
        }
    }
    Ok(())
}
