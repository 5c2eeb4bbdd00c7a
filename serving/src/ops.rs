//! Operations: `/healthz`, `/readyz`, `/metrics`, `/openapi.json`, and the request-latency
//! middleware behind the per-route histograms.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{MatchedPath, State};
use axum::http::{Method, StatusCode, header};
use axum::response::IntoResponse;
use metrics::{Counter, Histogram};
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::App;

pub use tandem_common::telemetry::prometheus;

/// Records `tandem_http_request_duration_seconds{route, method, status}` and
/// `tandem_http_requests_total{route, method, status}` of a request begun at `start` (the edge's
/// layer calls it); the route is the matched pattern (`/v1/users/{id}/profile`), never the raw
/// path, and a method outside HTTP's own is `OTHER` (so a client cannot grow the label sets
/// without bound).
pub fn track(matched: Option<&MatchedPath>, method: &Method, status: u16, start: Instant) {
    let method = match *method {
        Method::GET
        | Method::POST
        | Method::PUT
        | Method::DELETE
        | Method::PATCH
        | Method::HEAD
        | Method::OPTIONS
        | Method::TRACE
        | Method::CONNECT => method.clone(),
        _ => Method::from_bytes(b"OTHER").expect("a valid method token"),
    };
    let route = matched.map_or("unmatched", |m| m.as_str());
    let (latency, count) = route_metrics(route, &method, status);
    latency.record(start.elapsed().as_secs_f64());
    count.increment(1);
}

/// A route's request metrics, per method and status.
type RouteMetrics = HashMap<(Method, u16), (Histogram, Counter)>;

/// The handles of one (route, method, status), registered on first use and then shared: a
/// request costs a read lock and two hash lookups, not three label strings and two registry
/// lookups. Routes are the router's patterns, methods and statuses few, so the map stays small.
fn route_metrics(route: &str, method: &Method, status: u16) -> (Histogram, Counter) {
    static HANDLES: OnceLock<RwLock<HashMap<String, RouteMetrics>>> = OnceLock::new();
    let handles = HANDLES.get_or_init(Default::default);
    let key = (method.clone(), status);
    if let Some(found) = handles
        .read()
        .expect("metrics handles lock")
        .get(route)
        .and_then(|by| by.get(&key))
    {
        return found.clone();
    }
    let labels = [
        ("route", route.to_string()),
        ("method", method.to_string()),
        ("status", status.to_string()),
    ];
    let made = (
        metrics::histogram!("tandem_http_request_duration_seconds", &labels),
        metrics::counter!("tandem_http_requests_total", &labels),
    );
    handles
        .write()
        .expect("metrics handles lock")
        .entry(route.to_string())
        .or_default()
        .entry(key)
        .or_insert(made)
        .clone()
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "Alive")), tag = "operations")]
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// What `/readyz` checked.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// Whether the server can answer from a snapshot and the online store.
    pub ready: bool,
    /// The online store answered within the store timeout.
    pub store: bool,
    /// The snapshot loaded, if any.
    pub snapshot: Option<String>,
    /// What is missing, in words.
    pub problems: Vec<String>,
}

/// Ready when the online store answers and a snapshot is loaded. Answered from what the
/// server's background read of the snapshot pointer (every `poll`) last saw, so a probe costs
/// the store nothing; the store's own error text is only on the admin listener.
#[utoipa::path(
    get,
    path = "/readyz",
    responses((status = 200, description = "Ready", body = Readiness), (status = 503, description = "Not ready; `problems` says why", body = Readiness)),
    tag = "operations"
)]
pub async fn readyz(State(app): State<Arc<App>>) -> impl IntoResponse {
    readiness(&app, false)
}

/// `/readyz` of the admin listener: the same, with the store's last error in `problems`.
pub async fn readyz_details(State(app): State<Arc<App>>) -> impl IntoResponse {
    readiness(&app, true)
}

fn readiness(app: &App, details: bool) -> (StatusCode, Json<Readiness>) {
    let mut problems = Vec::new();
    let health = app.snapshots.health();
    // Fresh: read within a few polls (a read waits at most 5 s for the store).
    let fresh = app.opts.poll * 3 + Duration::from_secs(5);
    let store = health.error.is_none() && health.ok_at.is_some_and(|t| t.elapsed() <= fresh);
    if !store {
        problems.push(match (&health.error, details) {
            (Some(e), true) => format!("the online store: {e}"),
            (None, _) => "the online store has not answered a pointer read lately".to_string(),
            (Some(_), false) => {
                "the online store did not answer the last pointer read (details on the admin listener and in the logs)".to_string()
            }
        });
    }
    let snapshot = app.snapshots.current().map(|s| s.id().to_string());
    if snapshot.is_none() {
        problems.push("no snapshot loaded: none published yet (run `tandem batch run`)".into());
    }
    let ready = problems.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            ready,
            store,
            snapshot,
            problems,
        }),
    )
}

/// Prometheus text format.
pub async fn metrics_text() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        prometheus().render(),
    )
}
