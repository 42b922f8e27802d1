//! The HTTP(S) listener: routes, and the TLS accept loop (certificates in [`crate::tls`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::error::{ApiError, ErrorCode};
use crate::hub::Hub;
use crate::{api, commands, mgs};

/// Completed TLS handshakes waiting for the server to pick them up.
const TLS_ACCEPT_QUEUE: usize = 64;
/// A client that has not finished its TLS handshake in this time is dropped.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Every route the gateway serves.
pub(crate) fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/", post(api::handle))
        .route("/ssmx/v1/register", post(api::register))
        .route(
            "/v1/control-channel/{instance_id}",
            get(mgs::control_channel_socket).post(mgs::create_control_channel),
        )
        .route(
            "/v1/data-channel/{session_id}",
            get(mgs::data_channel_socket).post(mgs::create_data_channel),
        )
        .route(
            commands::output::ROUTE,
            get(commands::output::get).put(commands::output::put).layer(
                // The whole stream plus room for a multipart-free framing overhead.
                DefaultBodyLimit::max(commands::output::MAX_STREAM_BYTES + 64 * 1024),
            ),
        )
        .layer(DefaultBodyLimit::max(api::MAX_API_BODY))
        .layer(axum::middleware::map_response(aws_shaped_refusals))
        .layer(axum::middleware::from_fn(request_id))
        .with_state(hub)
}

/// The response header AWS services name each request by; SDKs report it with errors.
const REQUEST_ID_HEADER: &str = "x-amzn-requestid";

/// Gives every request an id, as AWS does: returned as `x-amzn-RequestId` and carried by the
/// request's log lines, so a client's error and the gateway's log can be matched.
async fn request_id(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let id = uuid::Uuid::new_v4().to_string();
    let span = tracing::info_span!("request", request_id = %id);
    let mut response = tracing::Instrument::instrument(next.run(request), span).await;
    if let Ok(value) = http::HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// Rewrites the refusals the HTTP layer makes by itself (a body over the limit, an unknown path
/// or method, a malformed upgrade), which come as plain text, into the AWS JSON error shape that
/// SDKs parse. Answers the handlers made (JSON or XML) pass unchanged.
async fn aws_shaped_refusals(response: Response) -> Response {
    let status = response.status();
    let plain = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.starts_with("text/plain"));
    if !status.is_client_error() || !plain {
        return response;
    }
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::RequestEntityTooLarge,
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => ErrorCode::UnknownOperation,
        _ => ErrorCode::Validation,
    };
    let message = match code {
        ErrorCode::RequestEntityTooLarge => format!(
            "the request body is larger than the gateway's limit of {} bytes",
            api::MAX_API_BODY
        ),
        ErrorCode::UnknownOperation => "no operation is served at this path and method".into(),
        _ => {
            let body = axum::body::to_bytes(response.into_body(), 4096)
                .await
                .unwrap_or_default();
            String::from_utf8_lossy(&body).trim().to_owned()
        }
    };
    let mut answer = ApiError::new(code, message).into_response();
    if code == ErrorCode::Validation {
        *answer.status_mut() = status;
    }
    answer
}

/// A listener whose connections come out of TLS handshakes run concurrently, so a slow client
/// cannot hold up the others.
pub(crate) struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `listener`; the accept loop stops when `stop` is cancelled.
    pub fn spawn(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        tracker: &tokio_util::task::TaskTracker,
        stop: CancellationToken,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(TLS_ACCEPT_QUEUE);
        let handshakes = tracker.clone();
        tracker.spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(e) => {
                            debug!(error = %e, "accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = stop.cancelled() => break,
                };
                // Small frames must not wait for delayed ACKs (see the plain listener).
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                let stop = stop.clone();
                handshakes.spawn(async move {
                    let handshake =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                    tokio::select! {
                        result = handshake => match result {
                            Ok(Ok(tls)) => { let _ = tx.send((tls, peer)).await; }
                            Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                            Err(_) => debug!(%peer, "TLS handshake timed out"),
                        },
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
        Ok(Self { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(pair) => pair,
            // The accept loop stopped (shutdown): never yield another connection.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
