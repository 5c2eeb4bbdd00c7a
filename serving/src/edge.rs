//! The HTTP edge: what a slow, broken or hostile client can hold is bounded.
//!
//! - A connection must send its request headers within `header_timeout` (hyper closes it
//!   otherwise); at most `max_connections` are open at once (the next ones wait in the
//!   listen backlog until one closes).
//! - At most `max_in_flight` requests are served at once: the next ones are answered 503
//!   `overloaded` (with `Retry-After`) at once instead of queueing.
//! - A request's body must arrive within `body_timeout` (408), and `POST /v1/events` checks
//!   the key before it reads the body (`api::post_events`).
//! - Every answer carries an `x-request-id`: the client's, when it sent a sane one, or a new one
//!   set on the request for a handler that logs it.
//! - At shutdown, the listener closes, idle connections close at once, and the requests in
//!   flight get `shutdown_grace` to finish (an idle keep-alive connection held shutdown for its
//!   whole keep-alive before).
//!
//! Before this, 200 half-sent requests and 30 unauthenticated 900 KB partial POSTs were held
//! for 68 s (+65 MiB), and with 20 idle connections a SIGTERM waited 20 s.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::error::ApiError;

/// The edge's limits (`[server]` of the configuration).
#[derive(Debug, Clone)]
pub struct EdgeOptions {
    /// Longest wait for a connection's request headers.
    pub header_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
    /// At shutdown, how long the requests in flight get.
    pub shutdown_grace: Duration,
}

impl Default for EdgeOptions {
    fn default() -> Self {
        EdgeOptions {
            header_timeout: Duration::from_secs(10),
            max_connections: 1024,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl EdgeOptions {
    /// The options of `config`.
    pub fn from_config(config: &tandem_common::config::Config) -> Self {
        EdgeOptions {
            header_timeout: config.server.header_timeout,
            max_connections: config.server.max_connections,
            shutdown_grace: config.server.shutdown_grace,
        }
    }
}

/// Serves `router` on `listener` until `cancel`, within `opts`; then stops accepting, lets idle
/// connections close and the requests in flight finish for up to `opts.shutdown_grace`.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
    opts: &EdgeOptions,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let slots = opts.max_connections.clamp(1, 1 << 20) as u32;
    let open = Arc::new(Semaphore::new(slots as usize));
    loop {
        let permit = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            p = open.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(
            router
                .clone()
                .map_request(|r: axum::http::Request<hyper::body::Incoming>| r.map(Body::new)),
        );
        let (cancel, header_timeout) = (cancel.clone(), opts.header_timeout);
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = cancel.cancelled() => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
    }
    drop(listener);
    // Every connection holds a permit until it ends: all of them back means all closed.
    if tokio::time::timeout(opts.shutdown_grace, open.acquire_many(slots))
        .await
        .is_err()
    {
        tracing::warn!(
            grace = ?opts.shutdown_grace,
            "requests still in flight after the shutdown grace; closing their connections"
        );
    }
    Ok(())
}

/// The in-flight limit: a semaphore of `max_in_flight` permits.
#[derive(Debug, Clone)]
pub struct InFlight(Arc<Semaphore>);

impl InFlight {
    /// At most `n` requests at once.
    pub fn new(n: usize) -> Self {
        InFlight(Arc::new(Semaphore::new(n.clamp(1, Semaphore::MAX_PERMITS))))
    }
}

/// The per-request guards of the edge, in one layer: the request id, CORS, the in-flight limit
/// and the request metrics (`ops::track`). (A `from_fn` layer clones the inner service and boxes
/// a future per request, so one rather than four; the edge's layers together cost a quarter of
/// a profile request's throughput on the serving bench, 35.5k req/s against 46.5k without them,
/// one layer or four alike.)
#[derive(Debug, Clone)]
pub struct Guard {
    /// The in-flight limit.
    pub in_flight: InFlight,
    /// The allowed origins.
    pub cors: Cors,
}

/// [`Guard`]'s layer.
pub async fn guard(
    State(g): State<Guard>,
    matched: Option<MatchedPath>,
    mut request: Request,
    next: Next,
) -> Response {
    let start = std::time::Instant::now();
    let method = request.method().clone();
    let id = request_id(&request);
    request.headers_mut().insert(X_REQUEST_ID, id.clone());
    let origin = allowed_origin(&g.cors, &request);
    let mut response = match &origin {
        Some(_) if is_preflight(&request) => preflight(),
        _ => shed(&g.in_flight, request, next).await,
    };
    if let Some(origin) = origin {
        cors_answer(&mut response, origin);
    }
    response.headers_mut().insert(X_REQUEST_ID, id);
    crate::ops::track(matched.as_ref(), &method, response.status().as_u16(), start);
    response
}

/// Answers 503 `overloaded` at once when `max_in_flight` requests are being served (the
/// health probes excepted, so that an overloaded server is not also restarted).
async fn shed(limit: &InFlight, request: Request, next: Next) -> Response {
    if matches!(request.uri().path(), "/healthz" | "/readyz") {
        return next.run(request).await;
    }
    match limit.0.clone().try_acquire_owned() {
        Ok(_permit) => next.run(request).await,
        Err(_) => {
            metrics::counter!("tandem_serving_shed_total").increment(1);
            ApiError::unavailable(
                "overloaded",
                "the server is at its limit of requests in flight (server.max_in_flight); retry shortly",
                1,
            )
            .into_response()
        }
    }
}

/// The request's id: its `x-request-id` when it is 1–64 characters of `[A-Za-z0-9._-]`, or a
/// new one. Set on the request (for a handler that logs it) and on the answer; no span per
/// request (a span's fields are formatted on every request, for the rare request that logs).
fn request_id(request: &Request) -> HeaderValue {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let sane = |v: &HeaderValue| {
        let b = v.as_bytes();
        (1..=64).contains(&b.len())
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
    };
    match request.headers().get(X_REQUEST_ID).filter(|v| sane(v)) {
        Some(v) => v.clone(),
        None => {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let seed = *PROCESS_SEED;
            HeaderValue::from_str(&format!("{seed:08x}-{n:x}")).expect("hex is a header value")
        }
    }
}

/// The browser origins allowed to call the API (`server.cors_origins`).
#[derive(Debug, Clone)]
pub struct Cors(Arc<Vec<HeaderValue>>, bool);

impl Cors {
    /// The origins of `origins`; `*` allows every origin.
    pub fn new(origins: &[String]) -> Self {
        let any = origins.iter().any(|o| o == "*");
        Cors(
            Arc::new(
                origins
                    .iter()
                    .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok())
                    .collect(),
            ),
            any,
        )
    }
}

/// CORS for the allowed origins: a preflight (`OPTIONS` with `Access-Control-Request-Method`)
/// from one is answered 204 with what it may send ([`preflight`]); its other requests get
/// `Access-Control-Allow-Origin` ([`cors_answer`]). Requests from other origins get no CORS
/// headers (so browsers refuse them), and an `OPTIONS` that is not an allowed preflight reaches
/// the router (405 in the `{code, message}` form).
fn allowed_origin(cors: &Cors, request: &Request) -> Option<HeaderValue> {
    request
        .headers()
        .get(axum::http::header::ORIGIN)
        .filter(|o| cors.1 || cors.0.iter().any(|a| a == *o))
        .cloned()
}

fn is_preflight(request: &Request) -> bool {
    request.method() == axum::http::Method::OPTIONS
        && request
            .headers()
            .contains_key(axum::http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The answer to an allowed preflight.
fn preflight() -> Response {
    use axum::http::header;
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, x-request-id"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    r
}

/// The CORS headers of an answer to the allowed `origin`.
fn cors_answer(response: &mut Response, origin: HeaderValue) {
    use axum::http::header;
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("x-request-id, retry-after"),
    );
    h.append(header::VARY, HeaderValue::from_static("origin"));
}

/// The header of request ids.
pub const X_REQUEST_ID: &str = "x-request-id";

/// Tells request ids of this process from another's: the low bits of the start time.
static PROCESS_SEED: std::sync::LazyLock<u32> = std::sync::LazyLock::new(|| {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() ^ std::process::id())
});

/// Reads a request body of at most `limit` bytes within `timeout`: 413 past the limit, 408 when
/// the client is too slow, 400 when the body breaks off.
pub async fn read_body(
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<bytes::Bytes, ApiError> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            // axum wraps http-body-util's LengthLimitError, "length limit exceeded".
            if e.to_string().contains("length limit") {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_body",
                    format!("the body is over {limit} bytes"),
                ))
            } else {
                Err(ApiError::bad_request(
                    "invalid_body",
                    format!("the body could not be read: {e}"),
                ))
            }
        }
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the body did not arrive within {} s (server.body_timeout)",
                timeout.as_secs_f64()
            ),
        )),
    }
}
