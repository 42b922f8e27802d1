//! The gateway's Prometheus metrics, in the OpenMetrics text format at `GET /metrics` on their
//! own listener (`metrics_listen`), apart from the API port so that scraping needs no
//! credentials and can stay on a private address.
//!
//! Counters are kept as things happen: bytes relayed, failed authentications, requests the
//! access policies refused. Gauges are read off the gateway's state at each scrape: live
//! sessions by type and state, connected agents, command invocations by status, and the
//! recording backlog.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::hub::Hub;
use crate::session::Role;

/// The scrape's media type.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    /// `client_to_agent` or `agent_to_client`.
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    /// The SigV4 service of the request (`ssm`, `ssmmessages`, `kms`).
    service: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    /// The action refused, as policies name it (`ssm:StartSession`).
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SessionLabels {
    /// The session type of the session's document (`Standard_Stream`, `Port`, …).
    r#type: String,
    /// The session's status, as DescribeSessions reports it.
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    /// The invocation's status (`Pending`, `InProgress`, `Success`, …).
    status: String,
}

/// The gateway's metrics and the registry that names them.
pub(crate) struct Metrics {
    registry: Registry,
    relayed_bytes: Family<DirectionLabels, Counter>,
    authentication_failures: Family<ServiceLabels, Counter>,
    access_denied: Family<ActionLabels, Counter>,
    sessions: Family<SessionLabels, Gauge>,
    connected_agents: Gauge,
    command_invocations: Family<StatusLabels, Gauge>,
    recording_backlog: Gauge,
}

impl Metrics {
    /// Registers every metric under the `ssmx_` prefix.
    pub fn new() -> Self {
        let mut metrics = Metrics {
            registry: Registry::with_prefix("ssmx"),
            relayed_bytes: Family::default(),
            authentication_failures: Family::default(),
            access_denied: Family::default(),
            sessions: Family::default(),
            connected_agents: Gauge::default(),
            command_invocations: Family::default(),
            recording_backlog: Gauge::default(),
        };
        let r = &mut metrics.registry;
        r.register(
            "relayed_bytes",
            "Session stream bytes the relay passed on, by direction",
            metrics.relayed_bytes.clone(),
        );
        r.register(
            "authentication_failures",
            "Signed requests whose signature or credential did not verify, by service",
            metrics.authentication_failures.clone(),
        );
        r.register(
            "access_denied",
            "Requests the access policies refused, by action",
            metrics.access_denied.clone(),
        );
        r.register(
            "sessions",
            "Live sessions by session type and state",
            metrics.sessions.clone(),
        );
        r.register(
            "connected_agents",
            "Agents with an open control channel",
            metrics.connected_agents.clone(),
        );
        r.register(
            "command_invocations",
            "Run Command invocations in the database, by status",
            metrics.command_invocations.clone(),
        );
        r.register(
            "recording_backlog",
            "Recording records queued for the disk across live sessions",
            metrics.recording_backlog.clone(),
        );
        metrics
    }

    /// The counter of bytes relayed from `from`, to keep for a connection's lifetime.
    pub fn relayed_from(&self, from: Role) -> Counter {
        let direction = match from {
            Role::Client => "client_to_agent",
            Role::Agent => "agent_to_client",
        };
        self.relayed_bytes
            .get_or_create(&DirectionLabels { direction })
            .clone()
    }

    /// Counts a request whose signature did not verify.
    pub fn authentication_failed(&self, service: &'static str) {
        self.authentication_failures
            .get_or_create(&ServiceLabels { service })
            .inc();
    }

    /// What the access policies tell of each refusal: it is counted by its action.
    pub fn refusal_hook(&self) -> crate::access::RefusalHook {
        let counter = self.access_denied.clone();
        crate::access::RefusalHook::new(move |action: &str| {
            counter
                .get_or_create(&ActionLabels {
                    action: action.to_owned(),
                })
                .inc();
        })
    }

    /// Reads the gauges off `hub` and encodes everything.
    fn scrape(&self, hub: &Hub) -> Result<String, String> {
        let statuses = hub
            .store
            .open_session_statuses()
            .map_err(|e| e.to_string())?;
        let mut sessions: HashMap<SessionLabels, i64> = HashMap::new();
        let mut backlog = 0;
        for session in hub.live_sessions() {
            backlog += session.recording_backlog();
            let Some(state) = statuses.get(&session.id) else {
                continue;
            };
            let labels = SessionLabels {
                r#type: session.session_type.clone(),
                state: state.clone(),
            };
            *sessions.entry(labels).or_default() += 1;
        }
        self.sessions.clear();
        for (labels, count) in sessions {
            self.sessions.get_or_create(&labels).set(count);
        }
        self.recording_backlog.set(backlog as i64);
        self.connected_agents.set(hub.connected_agents() as i64);
        let invocations = hub
            .store
            .invocation_status_counts()
            .map_err(|e| e.to_string())?;
        self.command_invocations.clear();
        for (status, count) in invocations {
            self.command_invocations
                .get_or_create(&StatusLabels { status })
                .set(count);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .map_err(|e| e.to_string())?;
        Ok(text)
    }
}

/// Serves `GET /metrics` on `listener` until the gateway stops.
pub(crate) fn serve(hub: Arc<Hub>, listener: tokio::net::TcpListener) {
    let stop = hub.shutdown.clone();
    let app = Router::new().route("/metrics", get(scrape)).with_state(hub);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
}

async fn scrape(State(hub): State<Arc<Hub>>) -> Response {
    match hub.metrics.scrape(&hub) {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "metrics scrape failed");
            (StatusCode::INTERNAL_SERVER_ERROR, e).into_response()
        }
    }
}
