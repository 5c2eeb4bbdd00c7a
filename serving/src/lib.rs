//! Tandem's serving layer (ARCHITECTURE.md §7): the axum HTTP API that storefronts call. It accepts
//! events onto the bus and answers profile and recommendation queries by merging the batch
//! snapshot with the speed layer's deltas after its cutoff, per request.
//!
//! | module | what |
//! |---|---|
//! | [`api`] | the v1 routes, per resource |
//! | [`openapi`] | the OpenAPI document, generated from the routes |
//! | [`state`] | the server's state and the followers that keep it current |
//! | [`auth`] | bearer API keys with scopes |
//! | [`snapshot`] | following the snapshot pointer; the bounded in-memory cache of its rows |
//! | [`ops`] | `/healthz`, `/readyz`, `/metrics`, request metrics |
//! | [`edge`] | the HTTP edge: header and body timeouts, connection and in-flight limits, request ids, graceful shutdown |
//! | [`error`] | `{code, message}` errors |
//!
//! ```no_run
//! # async fn run(store: std::sync::Arc<dyn tandem_common::store::OnlineStore>,
//! #              bus: std::sync::Arc<dyn tandem_common::bus::Bus>,
//! #              lake: tandem_common::lake::Lake) -> std::io::Result<()> {
//! use tandem_serving::{App, ServeOptions, auth::Keys};
//! use tandem_common::task::Tasks;
//! let mut tasks: Tasks<std::io::Error> = Tasks::new(&tokio_util::sync::CancellationToken::new());
//! let app = App::start(store, bus, lake, Keys::disabled(), ServeOptions::default(), &mut tasks).await;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! tasks.spawn("the API", |stop| tandem_serving::serve(listener, app, stop));
//! tasks.join().await.map_err(std::io::Error::other)
//! # }
//! ```

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use tokio_util::sync::CancellationToken;

pub mod api;
pub mod auth;
pub mod edge;
pub mod error;
pub mod openapi;
pub mod ops;
pub mod snapshot;
pub mod state;

#[cfg(test)]
mod tests;

pub use state::{App, ServeOptions};

/// The demo's web page (`tandem demo` serves it at `/`): plain HTML and script, no build step
/// and no external hosts; it calls the v1 API with the key in the URL's fragment.
pub const DEMO_PAGE: &str = include_str!("demo.html");

/// The router of the whole API.
pub fn router(app: Arc<App>) -> Router {
    let v1 = Router::new()
        .route(
            "/v1/events",
            post(api::post_events).layer(DefaultBodyLimit::max(api::MAX_BODY)),
        )
        .route("/v1/users/{id}", delete(api::delete_user))
        .route("/v1/users/{id}/profile", get(api::get_profile))
        .route(
            "/v1/users/{id}/recommendations",
            get(api::get_recommendations),
        )
        .route("/v1/items/popular", get(api::get_popular))
        .route("/v1/items/{id}/similar", get(api::get_similar))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/openapi.json", get(openapi::openapi));
    let v1 = if app.opts.admin_listener {
        v1
    } else {
        v1.route("/metrics", get(ops::metrics_text))
    };
    let guard = edge::Guard {
        in_flight: edge::InFlight::new(app.opts.max_in_flight),
        cors: edge::Cors::new(&app.opts.cors_origins),
    };
    v1.fallback(|| async { error::ApiError::not_found("no such route; see /openapi.json") })
        .method_not_allowed_fallback(|| async {
            error::ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method; see /openapi.json",
            )
        })
        // gzip for clients that ask for it, for bodies worth it (the OpenAPI document, long
        // lists); inside the guard layer, so that the request metrics include the compression.
        .layer(
            tower_http::compression::CompressionLayer::new()
                .compress_when(tower_http::compression::predicate::SizeAbove::new(1024)),
        )
        .layer(axum::middleware::from_fn_with_state(guard, edge::guard))
        .with_state(app)
}

/// The router of the admin listener (`server.admin_listen`): `/metrics`, `/healthz`, and
/// `/readyz` with the online store's error text. Not for the public network.
pub fn admin_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/metrics", get(ops::metrics_text))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz_details))
        .fallback(|| async {
            error::ApiError::not_found("the admin listener serves /metrics, /healthz and /readyz")
        })
        .with_state(app)
}

/// Serves the API on `listener` until `cancel`, then finishes the requests in flight (for up
/// to `edge.shutdown_grace`), within the limits of [`edge`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let opts = app.opts.edge.clone();
    edge::serve_router(listener, router(app), &opts, cancel).await
}
