//! The v1 routes (ARCHITECTURE.md §7) and the OpenAPI document generated from them.

// utoipa's `path` macro expands the `IntoParams` types of `params(…)` with qualified paths.
#![allow(unused_qualifications)]

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::{Arc, LazyLock};

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes as Payload;
use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Deserialize, Serialize, Serializer};
use tandem_common::config::Scope;
use tandem_common::event::{
    Acceptance, key_id_problem, now_ms, parse_event, rfc3339_ascii, to_bus_value,
};
use tandem_common::features::{ItemStats, Profile, decayed_at};
use tandem_common::store::SpeedState;
use tandem_models::candidates::{
    Candidate, CandidateOptions, Scored, Source, gather, keep_best, latent_depth, rank_logits,
};
use tandem_models::features::{Cf, PairContext, cf_max, cf_scores, user_features};
use tandem_models::latent::Latent;
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::App;
use crate::error::{ApiError, ErrorBody, rejection};
use crate::snapshot::{Folded, ItemId, ItemRef, ListedItem, Loaded, StoreFailure, timed};

/// Events per `POST /v1/events`.
pub const MAX_BATCH: usize = 1000;
/// Body size limit of `POST /v1/events`.
pub const MAX_BODY: usize = 1 << 20;
/// Largest `n` of the list routes.
pub const MAX_N: usize = 100;

/// The OpenAPI document, served at `/openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tandem",
        description = "Real-time personalization: events in; profiles, segments, propensity and recommendations out."
    ),
    paths(
        post_events,
        get_profile,
        get_recommendations,
        delete_user,
        get_similar,
        get_popular,
        crate::ops::healthz,
        crate::ops::readyz
    ),
    components(schemas(ErrorBody, EventDoc, EventsBody, InvalidEventsBody)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key from `[server].api_keys`, with the route's scope.",
                    ))
                    .build(),
            ),
        );
    }
}

/// An epoch-ms time, shown as RFC 3339 in UTC with milliseconds (`2026-11-22T07:00:00.000Z`),
/// written straight into the answer: a profile shows some forty times, and a `String` each
/// was a good part of a request's allocations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rfc3339(i64);

impl Rfc3339 {
    /// The time's 24 ASCII bytes, for years 0–9999 (`None` outside: [`fmt::Display`] writes
    /// those).
    fn ascii(&self) -> Option<[u8; 24]> {
        rfc3339_ascii(self.0)
    }
}

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(b) = self.ascii() {
            return f.write_str(std::str::from_utf8(&b).map_err(|_| fmt::Error)?);
        }
        let t = DateTime::<Utc>::from_timestamp_millis(self.0).ok_or(fmt::Error)?;
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.timestamp_subsec_millis()
        )
    }
}

impl Serialize for Rfc3339 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.ascii() {
            Some(b) => s.serialize_str(std::str::from_utf8(&b).map_err(serde::ser::Error::custom)?),
            None => s.collect_str(self),
        }
    }
}

/// `ms` as RFC 3339; `None` out of chrono's range.
fn rfc3339(ms: i64) -> Option<Rfc3339> {
    DateTime::<Utc>::from_timestamp_millis(ms).map(|_| Rfc3339(ms))
}

/// Serializes a value by its `Display` (a candidate's source), without a `String` between.
fn display<T: fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// `value` as a JSON answer. Serialized here rather than returned as `Json<T>`, so that the
/// answer can borrow its strings from the snapshot and the merged profile instead of copying
/// each one out of them.
fn json<T: Serialize>(value: &T) -> Response {
    let mut body = Vec::with_capacity(2048);
    match serde_json::to_writer(&mut body, value) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "an answer could not be serialized");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the answer could not be serialized",
            )
            .into_response()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// POST /v1/events

/// One event as `POST /v1/events` takes it: the document of the wire form (the server parses
/// it with `tandem_common::event::parse_event`, which holds these rules; this type only
/// describes them). Unknown fields and a field given twice are errors; `null` is absent.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"event_id": "e-1", "user_id": "u-42", "kind": "purchase", "item_id": "sku-7", "category": "shoes", "price": 59.9, "quantity": 1, "ts": "2026-12-06T10:00:00Z"}))]
pub struct EventDoc {
    /// Unique per user (1–128 characters): a repeat of the same user's id is a retry.
    #[schema(min_length = 1, max_length = 128)]
    pub event_id: String,
    /// 1–128 characters, none of `{`, `}` or a control character.
    #[schema(min_length = 1, max_length = 128)]
    pub user_id: String,
    /// `view`, `click`, `add_to_cart`, `remove_from_cart`, `purchase`, `search` or `rate`.
    pub kind: String,
    /// Required but for `search`; the same rule as `user_id`.
    #[schema(min_length = 1, max_length = 128)]
    pub item_id: Option<String>,
    /// 1–128 characters.
    pub category: Option<String>,
    /// Unit price, 0 to 1,000,000,000; required for `purchase`.
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub price: Option<f64>,
    /// 1 to 1,000,000 (default 1).
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub quantity: Option<u32>,
    /// Required for `rate`; finite.
    pub rating: Option<f64>,
    /// Required for `search`; 1–512 characters.
    pub query: Option<String>,
    /// RFC 3339 with any offset, or epoch milliseconds (a number); from 1970 to ingest time +
    /// `events.max_future`.
    pub ts: String,
    /// 1–128 characters.
    pub session_id: Option<String>,
    /// Up to 64 string values; keys 1–128 characters, values up to 1,024.
    pub props: Option<std::collections::BTreeMap<String, String>>,
}

/// The body of `POST /v1/events`: one event, or an array of 1 to 1,000.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EventsBody {
    /// One event.
    One(Box<EventDoc>),
    /// Up to 1,000 events.
    Many(Vec<EventDoc>),
}

/// The 400 answer when no event of the request is accepted.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InvalidEventsBody {
    /// `invalid_events`.
    pub code: String,
    /// The first event's problems, in words.
    pub message: String,
    /// Every event's problems.
    pub errors: Vec<EventReject>,
}

/// One rejected event of a batch.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventReject {
    /// Its index in the request (0 for a single event).
    pub index: usize,
    /// The first field at fault, if the problem is one field's.
    pub field: Option<String>,
    /// Every problem found, in words.
    pub message: String,
}

/// The answer to `POST /v1/events`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"accepted": 2, "rejected": 1, "ingest_ts": 1765015200000_i64, "errors": [{"index": 2, "field": "price", "message": "price: must be a number from 0 to 1000000000, got 1e300"}]}))]
pub struct IngestResponse {
    /// Events accepted: on the bus, each stamped with `ingest_ts`.
    pub accepted: usize,
    /// Events rejected; see `errors`.
    pub rejected: usize,
    /// The ingest time stamped on the accepted events (epoch ms).
    pub ingest_ts: i64,
    /// Why each rejected event was rejected.
    pub errors: Vec<EventReject>,
}

/// Accepts one event (a JSON object) or up to 1,000 (an array). Valid events are stamped with
/// `ingest_ts` and produced to the bus before the answer; invalid ones are reported by index,
/// and the valid ones beside them are still accepted.
#[utoipa::path(
    post,
    path = "/v1/events",
    request_body(content = EventsBody, description = "One event or an array of up to 1,000", content_type = "application/json"),
    responses(
        (status = 202, description = "At least one event accepted; rejects listed by index", body = IngestResponse),
        (status = 400, description = "No event accepted: every event invalid (`invalid_events`, with `errors`), or malformed JSON (`invalid_json`, `invalid_body`: then without `errors`)", body = InvalidEventsBody),
        (status = 401, description = "No key, or not a valid one (`unauthorized`)", body = ErrorBody), (status = 403, description = "The key lacks the route's scope (`forbidden`)", body = ErrorBody),
        (status = 408, description = "The body did not arrive within `server.body_timeout` (`body_timeout`)", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB or more than 1,000 events", body = ErrorBody),
        (status = 503, description = "The bus is unavailable; nothing accepted, retry after `Retry-After` seconds", body = ErrorBody)
    ),
    security(("api_key" = [])),
    tag = "events"
)]
pub async fn post_events(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    // The key before the body: an unauthenticated client cannot make the server hold a
    // megabyte for it (nor wait for one).
    app.keys.check(&headers, Scope::Ingest)?;
    let body = crate::edge::read_body(body, MAX_BODY, app.opts.body_timeout).await?;
    let items = events_of(&body)?;
    let ingest_ts = now_ms();
    let at = Acceptance {
        now_ms: ingest_ts,
        max_future_ms: app.opts.max_future_ms,
    };
    let mut records = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (index, v) in items.iter().enumerate() {
        match parse_event(v.get().as_bytes(), at) {
            Ok(e) => records.push((
                Payload::copy_from_slice(e.user_id.as_bytes()),
                Payload::from(to_bus_value(&e, ingest_ts)),
            )),
            Err(e) => errors.push(EventReject {
                index,
                field: e.field().map(str::to_string),
                message: e.to_string(),
            }),
        }
    }
    let accepted = records.len();
    metrics::counter!("tandem_serving_events_rejected_total").increment(errors.len() as u64);
    if accepted == 0 {
        let first = &errors[0];
        let message = if errors.len() == 1 {
            format!("event {}: {}", first.index, first.message)
        } else {
            format!(
                "all {} events are invalid; the first, event {}: {}",
                errors.len(),
                first.index,
                first.message
            )
        };
        let body =
            serde_json::json!({"code": "invalid_events", "message": message, "errors": errors});
        return Ok((StatusCode::BAD_REQUEST, Json(body)).into_response());
    }
    match tokio::time::timeout(app.opts.bus_timeout, app.bus.produce(records)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::error!(error = %e, events = accepted, "producing to the bus failed");
            return Err(ApiError::unavailable(
                "bus_unavailable",
                "the event bus is unavailable; nothing was accepted, retry later",
                1,
            ));
        }
        Err(_) => {
            tracing::error!(timeout = ?app.opts.bus_timeout, events = accepted, "producing to the bus timed out");
            return Err(ApiError::unavailable(
                "bus_unavailable",
                "the event bus did not answer in time; retry later (a retry is deduplicated by event_id)",
                1,
            ));
        }
    }
    metrics::counter!("tandem_serving_events_accepted_total").increment(accepted as u64);
    let body = IngestResponse {
        accepted,
        rejected: errors.len(),
        ingest_ts,
        errors,
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// Checks a user or item id taken from the path as events' ids are checked
/// ([`key_id_problem`]): a 60,000-character id got 404, not 400.
fn path_id(what: &str, id: &str) -> Result<(), ApiError> {
    match key_id_problem(id) {
        Some(problem) => Err(ApiError::bad_request(
            "invalid_path",
            format!("the {what} id in the path {problem}"),
        )),
        None => Ok(()),
    }
}

/// The events of a `POST /v1/events` body, each as its own JSON text: one object, or an array
/// of up to [`MAX_BATCH`]. Each is then parsed by the event parser itself, which refuses a
/// field given twice (parsing the body into a `serde_json::Value` first kept the last copy).
fn events_of(body: &[u8]) -> Result<Vec<&serde_json::value::RawValue>, ApiError> {
    use serde_json::value::RawValue;
    let invalid_json = |e: serde_json::Error| {
        ApiError::bad_request("invalid_json", format!("the body is not JSON: {e}"))
    };
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(invalid_json)?;
            if items.len() > MAX_BATCH {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_many_events",
                    format!("{} events in one request; at most {MAX_BATCH}", items.len()),
                ));
            }
            if items.is_empty() {
                return Err(ApiError::bad_request(
                    "invalid_body",
                    "an empty array: send one event or up to 1,000",
                ));
            }
            Ok(items)
        }
        Some(b'{') => Ok(vec![serde_json::from_slice(body).map_err(invalid_json)?]),
        _ => {
            // Not JSON at all, or JSON of another type: say which.
            serde_json::from_slice::<&RawValue>(body).map_err(invalid_json)?;
            Err(ApiError::bad_request(
                "invalid_body",
                "the body must be one event (an object) or an array of events",
            ))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The merged profile

/// What a degraded answer had to leave out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Degraded {
    /// The snapshot's row could not be read: the profile is the speed layer's part alone.
    SpeedOnly,
    /// The speed state could not be read (so whether the user was erased is unknown, and the
    /// snapshot row is not served alone), or nothing of the user could: the answer is popular
    /// items from memory.
    PopularOnly,
}

/// A category and the user's decayed interest in it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CategoryScore<'a> {
    /// The category.
    pub category: &'a str,
    /// The interest, decayed to the time of the request.
    pub score: f64,
}

/// One of the user's latest items.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecentItem<'a> {
    /// The item.
    pub item: &'a str,
    /// When the user last touched it (RFC 3339).
    #[schema(value_type = Option<String>)]
    pub ts: Option<Rfc3339>,
}

/// A user's profile: the snapshot's features plus the speed layer's since its cutoff.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProfileView<'a> {
    /// Events per kind.
    #[schema(value_type = BTreeMap<String, u64>)]
    pub counts: BTreeMap<&'static str, u64>,
    /// Events in all.
    pub events: u64,
    /// Units bought.
    pub units: u64,
    /// Money spent.
    pub spend: f64,
    /// The first event's time (RFC 3339).
    #[schema(value_type = Option<String>)]
    pub first_seen: Option<Rfc3339>,
    /// The latest event's time.
    #[schema(value_type = Option<String>)]
    pub last_seen: Option<Rfc3339>,
    /// The latest purchase's time.
    #[schema(value_type = Option<String>)]
    pub last_purchase: Option<Rfc3339>,
    /// Interest per category, strongest first, decayed to now. The snapshot's part keeps the
    /// user's 256 strongest categories at its cutoff; events since add to any category.
    pub affinity: Vec<CategoryScore<'a>>,
    /// The latest distinct items, newest first.
    pub recent_items: Vec<RecentItem<'a>>,
    /// The latest distinct items bought, newest first (recommendations leave them out).
    pub recent_purchases: Vec<RecentItem<'a>>,
}

impl<'a> ProfileView<'a> {
    fn new(p: &'a Profile, now_ms: i64) -> Self {
        // Ordered by the log-space scores: read at a time far from the events, the decayed
        // values may all be 0, but their order is the scores' (the same shift for every one).
        let mut by_score: Vec<(&String, f64)> = p.affinity.iter().map(|(c, l)| (c, *l)).collect();
        by_score.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let affinity: Vec<CategoryScore> = by_score
            .into_iter()
            .map(|(c, l)| CategoryScore {
                category: c,
                score: decayed_at(l, now_ms),
            })
            .collect();
        let seen = p.last_ts >= p.first_ts;
        ProfileView {
            counts: tandem_common::event::Kind::ALL
                .iter()
                .map(|k| (k.as_str(), p.count(*k)))
                .collect(),
            events: p.events(),
            units: p.units,
            spend: p.spend_micros as f64 / 1e6,
            first_seen: if seen { rfc3339(p.first_ts) } else { None },
            last_seen: if seen { rfc3339(p.last_ts) } else { None },
            last_purchase: p.last_purchase_ts.and_then(rfc3339),
            affinity,
            recent_items: recent_view(&p.recent_items),
            recent_purchases: recent_view(&p.recent_purchases),
        }
    }
}

fn recent_view(items: &[(String, i64)]) -> Vec<RecentItem<'_>> {
    items
        .iter()
        .map(|(i, t)| RecentItem {
            item: i,
            ts: rfc3339(*t),
        })
        .collect()
}

/// How fresh an answer is.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct Freshness<'a> {
    /// The snapshot merged in, if any has been published.
    pub snapshot: Option<&'a str>,
    /// Its cutoff (RFC 3339): its part holds the events ingested before it.
    #[schema(value_type = Option<String>)]
    pub cutoff: Option<Rfc3339>,
    /// When the batch run that made the snapshot started.
    pub snapshot_created_at: Option<&'a str>,
    /// The bus offset of the last event of this user the speed layer applied.
    pub last_offset: Option<u64>,
    /// Speed-layer epochs merged in (ingest-time epochs at or after the cutoff).
    pub speed_epochs: usize,
    /// Events on this user's bus partition the speed layer has yet to apply (refreshed every
    /// second; absent until first measured).
    pub consumer_lag: Option<u64>,
}

/// The answer to `GET /v1/users/{id}/profile`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "user_id": "u-42",
    "profile": {
        "counts": {"view": 12, "click": 4, "add_to_cart": 2, "remove_from_cart": 0, "purchase": 1, "search": 3, "rate": 0},
        "events": 22, "units": 1, "spend": 59.9,
        "first_seen": "2026-11-20T08:12:03Z", "last_seen": "2026-12-06T10:00:00Z",
        "last_purchase": "2026-12-06T10:00:00Z",
        "affinity": [{"category": "shoes", "score": 7.25}, {"category": "socks", "score": 1.5}],
        "recent_items": [{"item": "sku-7", "ts": "2026-12-06T10:00:00Z"}],
        "recent_purchases": [{"item": "sku-7", "ts": "2026-12-06T10:00:00Z"}]
    },
    "segment": 3, "propensity": 0.18,
    "freshness": {"snapshot": "20261206T0200Z", "cutoff": "2026-12-06T02:00:00Z",
        "snapshot_created_at": "2026-12-06T02:30:00Z", "last_offset": 1842, "speed_epochs": 2,
        "consumer_lag": 0},
    "degraded": null
}))]
pub struct ProfileResponse<'a> {
    /// The user.
    pub user_id: &'a str,
    /// The merged profile.
    pub profile: ProfileView<'a>,
    /// The user's segment, from the snapshot's models applied to the merged profile.
    pub segment: Option<u32>,
    /// P(the user buys within the models' window), likewise.
    pub propensity: Option<f64>,
    /// Where the answer comes from.
    pub freshness: Freshness<'a>,
    /// Set when part of the answer could not be read.
    pub degraded: Option<Degraded>,
    /// Why: `store_timeout`, `store_error` or `bad_snapshot_row` (a row of the snapshot that
    /// cannot be decoded; logged with its key, counted in `tandem_serving_row_errors_total`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded_reason: Option<&'static str>,
}

/// A user's merged profile and what went into it.
struct Merged {
    /// The snapshot row's profile with the speed epochs merged in, when there are epochs;
    /// without, [`Merged::profile`] is the row's own (no copy of it per request).
    with_speed: Option<Profile>,
    known: bool,
    snapshot_row: Option<Arc<tandem_common::store::UserRow>>,
    speed: Option<SpeedState>,
    degraded: Option<Degraded>,
    degraded_reason: Option<&'static str>,
}

/// Reads the user's snapshot row (cached) and speed state (one store call) concurrently and
/// merges them: snapshot ⊕ the speed epochs at or after its cutoff (ARCHITECTURE.md §3). A snapshot whose
/// cutoff is not after the user's erasure may still hold what was erased (its batch ran before
/// the tombstone, or another server cached its row): its row is left out.
async fn merged(app: &App, snap: Option<&Loaded>, user: &str) -> Merged {
    let cutoff = snap.map_or(i64::MIN, |s| s.pointer.cutoff_ms);
    let timeout = app.opts.store_timeout;
    let speed = timed("speed", timeout, app.store.speed(user, cutoff));
    let (row, speed) = match snap {
        Some(s) => {
            let row = s.user_row(app.store.as_ref(), user, timeout);
            let (row, speed) = tokio::join!(row, speed);
            (row, speed)
        }
        None => (Ok(None), speed.await),
    };
    let speed_failure = speed.as_ref().err().map(StoreFailure::reason);
    let speed = speed.ok();
    let erased = speed
        .as_ref()
        .and_then(|s| s.erased_ms)
        .max(app.erased_at(user));
    let before_erasure = snap.is_some_and(|s| erased.is_some_and(|e| s.pointer.cutoff_ms <= e));
    // An erasure is recorded beside the speed state: when that read failed, whether the user
    // was erased is unknown, and unknown counts as erased — the snapshot row (perhaps cached
    // from before the erasure) is not served alone (it was: an erased profile came back).
    let snapshot_row = match &row {
        Ok(Some(r)) if speed.is_some() && !before_erasure => Some(r.clone()),
        _ => None,
    };
    let epochs = speed.as_ref().map(|s| &s.epochs).filter(|e| !e.is_empty());
    let known = snapshot_row.is_some() || epochs.is_some();
    let with_speed = epochs.map(|epochs| {
        let mut profile = Profile::new();
        if let Some(r) = &snapshot_row {
            profile.merge(&r.profile);
        }
        for e in epochs.values() {
            profile.merge(e);
        }
        profile
    });
    let degraded = match (&row, &speed) {
        (_, None) => Some(Degraded::PopularOnly),
        (Err(_), Some(_)) => Some(Degraded::SpeedOnly),
        _ => None,
    };
    // The snapshot row's failure first: a bad row is the one the operator must hear of.
    let degraded_reason = row
        .as_ref()
        .err()
        .map(StoreFailure::reason)
        .or(speed_failure);
    Merged {
        with_speed,
        known,
        snapshot_row,
        speed,
        degraded,
        degraded_reason,
    }
}

/// The profile of no events: what a user without a row or epochs is shown as.
static NO_PROFILE: LazyLock<Profile> = LazyLock::new(Profile::new);

impl Merged {
    /// The merged profile.
    fn profile(&self) -> &Profile {
        match (&self.with_speed, &self.snapshot_row) {
            (Some(p), _) => p,
            (None, Some(r)) => &r.profile,
            (None, None) => &NO_PROFILE,
        }
    }
}

fn freshness<'a>(app: &App, snap: Option<&'a Loaded>, user: &str, m: &Merged) -> Freshness<'a> {
    Freshness {
        snapshot: snap.map(|s| s.id()),
        cutoff: snap.and_then(|s| rfc3339(s.pointer.cutoff_ms)),
        snapshot_created_at: snap.and_then(|s| s.created_at()),
        last_offset: m.speed.as_ref().and_then(|s| s.offset),
        speed_epochs: m.speed.as_ref().map_or(0, |s| s.epochs.len()),
        consumer_lag: app.lag_of(user),
    }
}

/// The user's merged profile, segment and propensity, with where they come from.
#[utoipa::path(
    get,
    path = "/v1/users/{id}/profile",
    params(("id" = String, Path, description = "The user id")),
    responses(
        (status = 200, description = "The merged profile", body = ProfileResponse),
        (status = 400, description = "The id breaks the id rules (`invalid_path`)", body = ErrorBody),
        (status = 404, description = "No event of this user is known", body = ErrorBody),
        (status = 401, description = "No key, or not a valid one (`unauthorized`)", body = ErrorBody), (status = 403, description = "The key lacks the route's scope (`forbidden`)", body = ErrorBody)
    ),
    security(("api_key" = [])),
    tag = "users"
)]
pub async fn get_profile(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> Result<Response, ApiError> {
    app.keys.check(&headers, Scope::Read)?;
    path_id("user", &user)?;
    let snap = app.snapshots.current();
    let m = merged(&app, snap.as_deref(), &user).await;
    let profile = m.profile();
    if !m.known && m.degraded.is_none() {
        return Err(ApiError::not_found(format!(
            "no event of user `{user}` is known"
        )));
    }
    let now = now_ms();
    let (segment, propensity) = match snap.as_deref().and_then(|s| s.models.as_ref()) {
        Some(models) if m.known => {
            let x = user_features(profile, now);
            (
                models.segments.as_ref().map(|s| s.assign(&x) as u32),
                models.propensity.as_ref().map(|p| p.probability(&x)),
            )
        }
        _ => m
            .snapshot_row
            .as_ref()
            .map_or((None, None), |r| (r.segment, r.propensity)),
    };
    Ok(json(&ProfileResponse {
        freshness: freshness(&app, snap.as_deref(), &user, &m),
        profile: ProfileView::new(profile, now),
        segment,
        propensity,
        degraded: m.degraded,
        degraded_reason: m.degraded_reason,
        user_id: &user,
    }))
}

// ---------------------------------------------------------------------------------------------
// Recommendations

/// Query of `GET /v1/users/{id}/recommendations`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RecsQuery {
    /// How many items (1–100, default 10).
    pub n: Option<usize>,
    /// The item the user is looking at: it leads the user's recent items (its similar items
    /// count in the collaborative scores, as the most recent item's), and it is itself left out.
    pub context_item: Option<String>,
    /// Items to leave out, comma-separated.
    pub exclude: Option<String>,
    /// Leave out every item the user already had an event with (the snapshot's latest 1,000
    /// and the speed layer's recent ones) [default: `server.exclude_seen`].
    pub exclude_seen: Option<bool>,
}

/// One recommended item.
#[derive(Debug, Serialize, ToSchema)]
pub struct Recommendation<'a> {
    /// The item.
    pub item: &'a str,
    /// The ranker's probability of interest, or, when the snapshot has no models, the item's
    /// popularity relative to the first item's (1 for the first).
    pub score: f64,
    /// Where the candidate came from: `cf:item_knn` (similar to the user's recent items),
    /// `cf:als` (the latent-factor model's best for the user), `category:<c>` or `popular`.
    #[serde(serialize_with = "display")]
    #[schema(value_type = String)]
    pub source: Source<'a>,
}

/// The answer to `GET /v1/users/{id}/recommendations`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "user_id": "u-42",
    "items": [
        {"item": "sku-9", "score": 0.41, "source": "cf:item_knn"},
        {"item": "sku-3", "score": 0.27, "source": "cf:als"},
        {"item": "sku-12", "score": 0.11, "source": "category:shoes"}
    ],
    "cold_start": false, "ranked_by": "ranker",
    "freshness": {"snapshot": "20261206T0200Z", "cutoff": "2026-12-06T02:00:00Z",
        "snapshot_created_at": "2026-12-06T02:30:00Z", "last_offset": 1842, "speed_epochs": 2,
        "consumer_lag": 0},
    "degraded": null
}))]
pub struct RecsResponse<'a> {
    /// The user.
    pub user_id: &'a str,
    /// The items, best first.
    pub items: Vec<Recommendation<'a>>,
    /// The user has no history: the items are popular ones.
    pub cold_start: bool,
    /// What ordered them: `ranker` (the snapshot's model) or `popularity`.
    pub ranked_by: &'static str,
    /// Where the answer comes from.
    pub freshness: Freshness<'a>,
    /// Set when part of the answer could not be read.
    pub degraded: Option<Degraded>,
    /// Why, as in the profile's answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded_reason: Option<&'static str>,
}

fn check_n(n: Option<usize>) -> Result<usize, ApiError> {
    match n.unwrap_or(10) {
        n @ 1..=MAX_N => Ok(n),
        n => Err(ApiError::bad_request(
            "invalid_query",
            format!("n: {n} is out of range; 1–{MAX_N}"),
        )),
    }
}

/// Popular items (overall or of `category`), from memory.
fn popular_items<'a>(snap: Option<&'a Loaded>, category: Option<&str>) -> &'a [String] {
    match (snap, category) {
        (Some(s), None) => &s.catalog.popular,
        (Some(s), Some(c)) => s.catalog.by_category.get(c).map_or(&[], Vec::as_slice),
        (None, _) => &[],
    }
}

/// Items left out of a list (a fast hasher: recommendations test ~200 candidates against it).
pub(crate) type Exclude<'a> = HashSet<&'a str, foldhash::fast::FixedState>;

/// The first `n` of a popular list not in `exclude`, scored by rank (1 for the first, then 1/2, …).
fn ranked_popular<'a>(
    list: &'a [String],
    exclude: &'a Exclude,
    n: usize,
) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    list.iter()
        .filter(|i| !exclude.contains(i.as_str()))
        .take(n)
        .enumerate()
        .map(|(rank, i)| (i.as_str(), 1.0 / (rank + 1) as f64))
}

/// Recommendations for the user: candidates (similar to recent items, top of strongest
/// categories, popular), ranked by the snapshot's model, each with its score and source. The
/// items the user bought lately (the profile's `recent_purchases`) are left out; with
/// `exclude_seen`, every item the user had an event with.
#[utoipa::path(
    get,
    path = "/v1/users/{id}/recommendations",
    params(("id" = String, Path, description = "The user id"), RecsQuery),
    responses(
        (status = 200, description = "The items, best first", body = RecsResponse),
        (status = 400, description = "A bad query or id (`invalid_query`, `invalid_path`)", body = ErrorBody), (status = 401, description = "No key, or not a valid one (`unauthorized`)", body = ErrorBody), (status = 403, description = "The key lacks the route's scope (`forbidden`)", body = ErrorBody)
    ),
    security(("api_key" = [])),
    tag = "users"
)]
pub async fn get_recommendations(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(user): Path<String>,
    query: Result<Query<RecsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    app.keys.check(&headers, Scope::Read)?;
    path_id("user", &user)?;
    let Query(q) = query.map_err(|r| rejection("invalid_query", r))?;
    let n = check_n(q.n)?;
    let snap = app.snapshots.current();
    let snap = snap.as_deref();
    let m = merged(&app, snap, &user).await;
    let timeout = app.opts.store_timeout;
    let exclude_seen = q.exclude_seen.unwrap_or(app.opts.exclude_seen);
    let (seen, seen_failed) = match snap {
        Some(s) if exclude_seen && m.known => {
            match s.user_items(app.store.as_ref(), &user, timeout).await {
                Ok(items) => (items, None),
                Err(e) => (Vec::new(), Some(e.reason())),
            }
        }
        _ => (Vec::new(), None),
    };
    let mut exclude: Exclude = q
        .exclude
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(c) = q.context_item.as_deref() {
        exclude.insert(c);
    }
    exclude.extend(m.profile().recent_purchases.iter().map(|(i, _)| i.as_str()));
    if exclude_seen {
        exclude.extend(m.profile().recent_items.iter().map(|(i, _)| i.as_str()));
        exclude.extend(seen.iter().map(String::as_str));
    }
    let fresh = freshness(&app, snap, &user, &m);
    let answer = |items, ranked_by, degraded, degraded_reason| {
        json(&RecsResponse {
            user_id: &user,
            items,
            cold_start: !m.known,
            ranked_by,
            freshness: fresh,
            degraded,
            degraded_reason,
        })
    };
    let popular = |degraded, reason| {
        let items = ranked_popular(popular_items(snap, None), &exclude, n)
            .map(|(item, score)| Recommendation {
                item,
                score,
                source: Source::Popular,
            })
            .collect();
        answer(items, "popularity", degraded, reason)
    };
    let Some(s) = snap else {
        return Ok(popular(m.degraded, m.degraded_reason));
    };
    if m.degraded == Some(Degraded::PopularOnly) {
        return Ok(popular(m.degraded, m.degraded_reason));
    }
    // Which items the user saw is unknown: popular items, and the answer says why.
    if let Some(reason) = seen_failed {
        return Ok(popular(Some(Degraded::PopularOnly), Some(reason)));
    }
    // The context item leads the recent items: its similar items count as the latest item's.
    let profile: Cow<'_, Profile> = match q.context_item.as_deref() {
        Some(c) => {
            let mut p = m.profile().clone();
            p.recent_items.retain(|(i, _)| i != c);
            p.recent_items.insert(0, (c.to_string(), now_ms()));
            Cow::Owned(p)
        }
        None => Cow::Borrowed(m.profile()),
    };
    let opts = s.models.as_ref().map(|m| m.candidates).unwrap_or_default();
    let sources = similar_sources(&profile, &opts);
    let similar_rows = match s.item_rows(app.store.as_ref(), &sources, timeout).await {
        Ok(rows) => rows,
        Err(e) => return Ok(popular(Some(Degraded::PopularOnly), Some(e.reason()))),
    };
    let user = personal(s, &similar_rows, &sources, exclude.len(), &opts);
    let cands = candidate_ids(s, &profile, &user, &exclude, &opts);
    let rows = match s
        .item_rows(app.store.as_ref(), &unlisted(&cands), timeout)
        .await
    {
        Ok(rows) => rows,
        Err(e) => return Ok(popular(Some(Degraded::PopularOnly), Some(e.reason()))),
    };
    let resolved = resolve_rows(s, &cands, &rows);
    let at = s
        .models
        .as_ref()
        .map_or_else(now_ms, |m| m.clock(now_ms(), profile.last_ts));
    let ranked = rank_resolved(s, &profile, &user, &cands, &resolved, at, n);
    let (items, ranked_by) = match ranked {
        Some(ranked) => (
            ranked
                .into_iter()
                .map(|r| Recommendation {
                    item: r.item,
                    score: r.score,
                    source: r.source,
                })
                .collect(),
            "ranker",
        ),
        None => {
            let mut scored: Vec<(f64, &str, Source)> = cands
                .iter()
                .zip(&resolved)
                .map(|(c, (id, _, st))| {
                    let score = st.map_or(f64::NEG_INFINITY, |s| s.popularity);
                    (score, *id, c.source)
                })
                .collect();
            keep_best(&mut scored, n, |(score, id, _)| (*score, *id));
            // Popularity is a log-space score: shown relative to the best, in (0, 1].
            let top = scored.first().map_or(0.0, |r| r.0);
            let relative = |score: f64| match score.is_finite() {
                true => (score - top).exp(),
                false => 0.0,
            };
            (
                scored
                    .iter()
                    .map(|(score, item, source)| Recommendation {
                        item,
                        score: relative(*score),
                        source: *source,
                    })
                    .collect(),
                "popularity",
            )
        }
    };
    Ok(answer(items, ranked_by, m.degraded, m.degraded_reason))
}

/// The recent items whose similar items are candidates and give the collaborative scores
/// ([`tandem_models::candidates::similar_sources`]), most recent first.
pub(crate) fn similar_sources<'a>(profile: &'a Profile, opts: &CandidateOptions) -> Vec<&'a str> {
    tandem_models::candidates::similar_sources(profile, opts).collect()
}

/// The candidates not among the snapshot's listed rows, whose rows come from the cache or the
/// store.
pub(crate) fn unlisted<'a>(cands: &[Candidate<'a, ItemId<'a>>]) -> Vec<&'a str> {
    let ids = cands.iter().map(|c| c.item);
    ids.filter_map(|i| match i {
        ItemId::Unlisted(i) => Some(i),
        ItemId::Listed(_) => None,
    })
    .collect()
}

/// What the user's history says, for candidates and ranking: the collaborative scores
/// ([`collaborative`]) and the latent-factor model's scores of its items, with its best items
/// ([`tandem_models::training::personal`] computes the same for the models).
pub(crate) struct Personal<'a> {
    /// The collaborative scores.
    pub cf: Cf<ItemId<'a>>,
    /// The latent model and the user folded into it.
    pub latent: Option<(&'a Latent, Arc<Folded>)>,
    /// The latent model's best items for the user, best first.
    pub latent_top: Vec<ItemId<'a>>,
}

impl Personal<'_> {
    /// The latent score of a candidate: by the number a listed row keeps, else by id.
    fn latent_score(&self, id: &str, listed: Option<&ListedItem>) -> f64 {
        let Some((m, user)) = &self.latent else {
            return 0.0;
        };
        let number = match listed {
            Some(l) => l.latent,
            None => m.index(id),
        };
        number.map_or(0.0, |i| m.score(&user.vector, i))
    }
}

/// [`Personal`] of the user whose [`similar_sources`] are `sources`, with the rows
/// `similar_rows`, for a request excluding `excluded` items.
pub(crate) fn personal<'a>(
    s: &'a Loaded,
    similar_rows: &'a [Option<ItemRef<'a>>],
    sources: &[&str],
    excluded: usize,
    opts: &CandidateOptions,
) -> Personal<'a> {
    let cf = collaborative(s, similar_rows);
    let model = s.models.as_ref().and_then(|m| m.latent.as_ref());
    let depth = latent_depth(opts, excluded);
    let latent = model.and_then(|m| Some((m, s.folded(m, sources, depth)?)));
    let latent_top = latent.as_ref().map_or_else(Vec::new, |(m, user)| {
        let top = &user.best[..depth.min(user.best.len())];
        top.iter()
            .map(|&i| s.resolve(&m.items[i as usize]))
            .collect()
    });
    Personal {
        cf,
        latent,
        latent_top,
    }
}

/// The collaborative scores ([`tandem_models::features::cf_scores`]) of the user whose
/// [`similar_sources`] have the rows `similar_rows`, by item as the snapshot names them: summed
/// in the order of the sources and their lists, as the models sum them.
pub(crate) fn collaborative<'a>(
    s: &'a Loaded,
    similar_rows: &'a [Option<ItemRef<'a>>],
) -> Cf<ItemId<'a>> {
    cf_scores(similar_rows.iter().flatten(), |row| s.similar_scored(row))
}

/// The candidates with the snapshot's listed items named by number, so that most of them cost
/// no string hashing, here or in ranking: exactly [`tandem_models::candidates::candidates`] over
/// the whole catalog, for the user's [`personal`] scores.
pub(crate) fn candidate_ids<'a>(
    s: &'a Loaded,
    profile: &'a Profile,
    personal: &Personal<'a>,
    exclude: &Exclude,
    opts: &CandidateOptions,
) -> Vec<Candidate<'a, ItemId<'a>>> {
    RowMemo::with(s, |memo| {
        // An excluded item is marked before gathering, as if taken already: `gather` skips
        // both alike.
        memo.start_marks();
        let mut unlisted: HashSet<&str, foldhash::fast::FixedState> = HashSet::default();
        for i in exclude {
            match s.resolve(i) {
                ItemId::Listed(k) => _ = memo.mark(k),
                ItemId::Unlisted(i) => _ = unlisted.insert(i),
            }
        }
        let admit = |i: ItemId<'a>| match i {
            ItemId::Listed(k) => memo.mark(k),
            ItemId::Unlisted(i) => unlisted.insert(i),
        };
        gather(
            profile,
            &personal.cf,
            personal.latent_top.iter().copied(),
            |i| s.name(i),
            |c| s.category_ids(c),
            s.popular_ids(),
            admit,
            opts,
        )
    })
}

/// What the requests on this thread keep per listed row of one snapshot (made anew when the
/// snapshot changes), so that a request costs per candidate, not per row:
/// - which rows the request gathering now has taken or excluded: a row is marked when its stamp
///   is the request's, so a new request clears nothing (~200 candidates a request, against up to
///   `server.cache_rows` rows);
/// - each row's ranker popularity term
///   ([`tandem_models::features::PairScorer::popularity_term`]) at the millisecond it was
///   computed at: requests ranked in the same millisecond share it (most of a request's
///   candidates are in the popular lists every request has). The term depends only on the
///   snapshot and the time, so a shared term is exactly the one the request would compute.
#[derive(Default)]
struct RowMemo {
    snapshot: Option<u64>,
    stamp: u32,
    marks: Vec<u32>,
    popularity: Vec<(i64, f64)>,
}

thread_local! {
    static ROW_MEMO: std::cell::RefCell<RowMemo> = Default::default();
}

impl RowMemo {
    /// Runs `f` with this thread's memo of snapshot `s`.
    fn with<R>(s: &Loaded, f: impl FnOnce(&mut RowMemo) -> R) -> R {
        ROW_MEMO.with_borrow_mut(|m| {
            if m.snapshot != Some(s.serial) {
                *m = RowMemo {
                    snapshot: Some(s.serial),
                    stamp: 0,
                    marks: vec![0; s.listed_len()],
                    popularity: vec![(i64::MIN, 0.0); s.listed_len()],
                };
            }
            f(m)
        })
    }

    /// Starts a request's gathering: no row marked.
    fn start_marks(&mut self) {
        if self.stamp == u32::MAX {
            self.marks.fill(0);
            self.stamp = 0;
        }
        self.stamp += 1;
    }

    /// Marks listed row `k`: false if it was marked already.
    fn mark(&mut self, k: u32) -> bool {
        let slot = &mut self.marks[k as usize];
        let fresh = *slot != self.stamp;
        *slot = self.stamp;
        fresh
    }

    /// Row `k`'s popularity term at `now_ms`: `term()` unless computed at that time already.
    fn popularity(&mut self, k: u32, now_ms: i64, term: impl FnOnce() -> f64) -> f64 {
        let slot = &mut self.popularity[k as usize];
        if slot.0 != now_ms {
            *slot = (now_ms, term());
        }
        slot.1
    }
}

/// A candidate's id, listed row (if it is listed) and stats (if it has a row).
pub(crate) type Resolved<'a> = (&'a str, Option<&'a ListedItem>, Option<&'a ItemStats>);

/// Per candidate, its id, listed row and stats; `unlisted_rows` are the rows of the unlisted
/// candidates, in order.
pub(crate) fn resolve_rows<'a>(
    s: &'a Loaded,
    cands: &[Candidate<'a, ItemId<'a>>],
    unlisted_rows: &'a [Option<ItemRef<'a>>],
) -> Vec<Resolved<'a>> {
    let mut unlisted = unlisted_rows.iter();
    cands
        .iter()
        .map(|c| match c.item {
            ItemId::Listed(k) => {
                let l = s.listed(k);
                (l.id.as_str(), Some(l), Some(&l.row.stats))
            }
            ItemId::Unlisted(i) => {
                let row = unlisted.next().and_then(Option::as_deref);
                (i, None, row.map(|r| &r.stats))
            }
        })
        .collect()
}

/// The `n` best candidates by the snapshot's ranker (`None` when it has no models): exactly
/// [`tandem_models::candidates::rank`] over the same candidates, stats and the user's
/// [`personal`] scores. For listed items,
/// the parts of the features are found by number (their category, their place among the user's
/// recent items) and the logit is summed from terms computed once: per snapshot (the item's
/// own, [`ListedItem::terms`], of this same ranker), per request (the user's,
/// [`tandem_models::features::PairScorer`]) and per millisecond and thread (the item's
/// popularity term, the same for every request at one time: [`RowMemo`]).
pub(crate) fn rank_resolved<'a>(
    s: &Loaded,
    profile: &Profile,
    personal: &Personal<'a>,
    cands: &[Candidate<'a, ItemId<'a>>],
    resolved: &[Resolved<'a>],
    now_ms: i64,
    n: usize,
) -> Option<Vec<Scored<'a>>> {
    let ranker = s.models.as_ref()?.ranker.as_ref()?;
    let cf = &personal.cf;
    let user = PairContext::new(profile, now_ms).with_cf_max(cf_max(cf));
    let scorer = user.scorer(ranker);
    // The user's categories and recent items that listed items can have, by number: a
    // category no listed item has, or a recent item not listed, matches none of them.
    let interests: Vec<(u32, (f64, f64))> = user
        .interests()
        .filter_map(|(c, v)| Some((s.category_number(c)?, scorer.interest_terms(v))))
        .collect();
    let mut recent: Vec<(u32, usize)> = Vec::with_capacity(profile.recent_items.len());
    // A bit per listed number modulo 256 of the recent ones: most candidates are not recent,
    // and the bit tells so without a search.
    let mut recent_bits = [0u64; 4];
    let bit = |k: u32| ((k / 64 % 4) as usize, 1u64 << (k % 64));
    for (r, (i, _)) in profile.recent_items.iter().enumerate() {
        if let ItemId::Listed(k) = s.resolve(i)
            && !recent.iter().any(|(x, _)| *x == k)
        {
            recent.push((k, r));
            let (w, b) = bit(k);
            recent_bits[w] |= b;
        }
    }
    let no_interest = scorer.interest_terms((0.0, 0.0));
    let none = ItemStats::default();
    RowMemo::with(s, |memo| {
        let rows = cands.iter().zip(resolved).map(|(c, (id, listed, stats))| {
            let logit = match listed {
                Some(l) => {
                    let interest = l
                        .category
                        .and_then(|cat| interests.iter().find(|(x, _)| *x == cat).map(|(_, v)| *v));
                    let (w, b) = bit(l.number);
                    let at = match recent_bits[w] & b {
                        0 => None,
                        _ => recent.iter().find(|(x, _)| *x == l.number).map(|(_, r)| *r),
                    };
                    let popularity = memo.popularity(l.number, now_ms, || {
                        scorer.popularity_term(l.side.popularity)
                    });
                    let score = cf.get(&c.item).copied().unwrap_or(0.0);
                    let latent = personal.latent_score(id, Some(l));
                    let interest = interest.unwrap_or(no_interest);
                    scorer.logit(interest, popularity, at, (score, latent), &l.terms)
                }
                None => {
                    let score = cf.get(&c.item).copied().unwrap_or(0.0);
                    let latent = personal.latent_score(id, None);
                    let features = user.features_scored(id, stats.unwrap_or(&none), score, latent);
                    ranker.logit(&features)
                }
            };
            (*id, c.source, logit)
        });
        Some(rank_logits(rows, n))
    })
}

// ---------------------------------------------------------------------------------------------
// Items

/// Query of the item list routes.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// How many items (1–100, default 10).
    pub n: Option<usize>,
    /// Only items of this category (`/v1/items/popular`).
    pub category: Option<String>,
}

/// An item and a score.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScoredItem<'a> {
    /// The item.
    pub item: &'a str,
    /// Cosine similarity (similar items) or rank-based popularity (1 = most popular).
    pub score: f64,
}

/// An item list.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"items": [{"item": "sku-9", "score": 0.62}, {"item": "sku-3", "score": 0.4}], "snapshot": "20261206T0200Z"}))]
pub struct ItemsResponse<'a> {
    /// The items, best first.
    pub items: Vec<ScoredItem<'a>>,
    /// The snapshot they come from.
    pub snapshot: Option<&'a str>,
}

/// The items most often engaged with by the same users as `id` (item-item co-occurrence,
/// cosine), from the snapshot.
#[utoipa::path(
    get,
    path = "/v1/items/{id}/similar",
    params(("id" = String, Path, description = "The item id"), ListQuery),
    responses(
        (status = 200, description = "The similar items, most similar first", body = ItemsResponse),
        (status = 400, description = "The id breaks the id rules (`invalid_path`), or a bad query", body = ErrorBody),
        (status = 401, description = "No key, or not a valid one (`unauthorized`)", body = ErrorBody), (status = 403, description = "The key lacks the route's scope (`forbidden`)", body = ErrorBody),
        (status = 404, description = "The item is not in the snapshot", body = ErrorBody),
        (status = 503, description = "The online store is unavailable", body = ErrorBody)
    ),
    security(("api_key" = [])),
    tag = "items"
)]
pub async fn get_similar(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(item): Path<String>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    app.keys.check(&headers, Scope::Read)?;
    path_id("item", &item)?;
    let Query(q) = query.map_err(|r| rejection("invalid_query", r))?;
    let n = check_n(q.n)?;
    let Some(s) = app.snapshots.current() else {
        return Err(ApiError::not_found(
            "no snapshot has been published yet: run `tandem batch run`",
        ));
    };
    let row = s
        .item_rows(app.store.as_ref(), &[item.as_str()], app.opts.store_timeout)
        .await
        .map_err(store_unavailable)?
        .pop()
        .flatten()
        .ok_or_else(|| {
            ApiError::not_found(format!("item `{item}` is not in snapshot {}", s.id()))
        })?;
    Ok(json(&ItemsResponse {
        items: row
            .similar
            .iter()
            .take(n)
            .map(|(i, score)| ScoredItem {
                item: i,
                score: *score,
            })
            .collect(),
        snapshot: Some(s.id()),
    }))
}

// ---------------------------------------------------------------------------------------------
// Erasure

/// The answer to `DELETE /v1/users/{id}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"user_id": "u-42", "erased_at": "2026-12-06T10:05:00.000Z", "erased_ms": 1765015500000_i64, "keys_deleted": 6}))]
pub struct EraseResponse {
    /// The user erased.
    pub user_id: String,
    /// The erasure's time (RFC 3339): the user's events accepted until then are gone from the
    /// online store now and from every batch run from now on; later events are new activity.
    pub erased_at: String,
    /// The same, epoch ms.
    pub erased_ms: i64,
    /// Keys deleted from the online store.
    pub keys_deleted: u64,
}

/// Erases a user (ARCHITECTURE.md §7): records a tombstone in the lake, which every later batch run
/// honours, then deletes the user's speed deltas, recent event ids and snapshot row from the
/// online store. The user's events still on their way to the speed layer are skipped when they
/// arrive. Idempotent: repeating it erases again, at the new time.
#[utoipa::path(
    delete,
    path = "/v1/users/{id}",
    params(("id" = String, Path, description = "The user id")),
    responses(
        (status = 200, description = "The user is erased", body = EraseResponse),
        (status = 400, description = "The id breaks the id rules (`invalid_path`): no event of it can be stored", body = ErrorBody),
        (status = 401, description = "No key, or not a valid one (`unauthorized`)", body = ErrorBody), (status = 403, description = "The key lacks the `admin` scope", body = ErrorBody),
        (status = 503, description = "The lake or the online store is unavailable: retry; a tombstone already written stays", body = ErrorBody)
    ),
    security(("api_key" = [])),
    tag = "users"
)]
pub async fn delete_user(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> Result<Json<EraseResponse>, ApiError> {
    app.keys.check(&headers, Scope::Admin)?;
    path_id("user", &user)?;
    let erased_ms = now_ms();
    // The tombstone first: once it is written, no batch run that starts later brings the user
    // back, whatever happens to the store call after it.
    let tombstone = tandem_common::lake::Tombstone {
        user_id: user.clone(),
        erased_ms,
    };
    let recorded = tokio::time::timeout(app.opts.bus_timeout, app.lake.record_erasure(&tombstone));
    match recorded.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(error = %e, "writing an erasure tombstone failed");
            return Err(ApiError::unavailable(
                "lake_unavailable",
                "the lake is unavailable; nothing was erased, retry later",
                1,
            ));
        }
        Err(_) => {
            return Err(ApiError::unavailable(
                "lake_unavailable",
                "the lake did not answer in time; retry later",
                1,
            ));
        }
    }
    // Erased for this server from now on, whatever happens to the store call.
    app.note_erasure(&user, erased_ms);
    // The rows of the snapshot served now; older ones are gone or going (the batch's cleanup),
    // and serving leaves out any row of a snapshot cut before the erasure.
    let snap = app.snapshots.current();
    let ids: Vec<String> = snap.iter().map(|s| s.id().to_string()).collect();
    let erase = app.store.erase_user(&user, erased_ms, &ids);
    let keys_deleted = timed("erase_user", app.opts.bus_timeout, erase)
        .await
        .map_err(store_unavailable)?;
    if let Some(s) = &snap {
        s.forget_user(&user);
    }
    tracing::info!(keys_deleted, "user erased");
    metrics::counter!("tandem_serving_erasures_total").increment(1);
    Ok(Json(EraseResponse {
        user_id: user,
        erased_at: rfc3339(erased_ms).map_or_else(String::new, |t| t.to_string()),
        erased_ms,
        keys_deleted,
    }))
}

fn store_unavailable(e: StoreFailure) -> ApiError {
    ApiError::unavailable(
        "store_unavailable",
        match e {
            StoreFailure::Timeout(t) => format!("the online store did not answer within {t:?}"),
            StoreFailure::Error(_) => "the online store is unavailable".to_string(),
            StoreFailure::BadRow(_) => "a row of the snapshot cannot be read".to_string(),
        },
        1,
    )
}

/// The most popular items, overall or of one category, from memory.
#[utoipa::path(
    get,
    path = "/v1/items/popular",
    params(ListQuery),
    responses(
        (status = 200, description = "The items, most popular first", body = ItemsResponse),
        (status = 400, description = "A bad query (`invalid_query`)", body = ErrorBody),
        (status = 401, description = "No key, or not a valid one (`unauthorized`)", body = ErrorBody), (status = 403, description = "The key lacks the route's scope (`forbidden`)", body = ErrorBody)
    ),
    security(("api_key" = [])),
    tag = "items"
)]
pub async fn get_popular(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    app.keys.check(&headers, Scope::Read)?;
    let Query(q) = query.map_err(|r| rejection("invalid_query", r))?;
    let n = check_n(q.n)?;
    let snap = app.snapshots.current();
    let list = popular_items(snap.as_deref(), q.category.as_deref());
    let exclude = Exclude::default();
    Ok(json(&ItemsResponse {
        items: ranked_popular(list, &exclude, n)
            .map(|(item, score)| ScoredItem { item, score })
            .collect(),
        snapshot: snap.as_deref().map(Loaded::id),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_show_as_chrono_writes_rfc3339() {
        for ms in [
            0,
            1,
            999,
            -1,
            -86_400_001,
            1_763_800_000_123,
            1_763_800_059_999,
            253_402_300_799_999, // 9999-12-31T23:59:59.999Z
        ] {
            let want = DateTime::<Utc>::from_timestamp_millis(ms)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            assert_eq!(rfc3339(ms).unwrap().to_string(), want, "{ms}");
            assert_eq!(
                serde_json::to_string(&rfc3339(ms)).unwrap(),
                format!("\"{want}\"")
            );
        }
        // Spread over the years 0–9999, every field's digits vary.
        let (lo, hi) = (-62_167_219_200_000_i64, 253_402_300_799_999_i64);
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ms = lo + (x % (hi - lo + 1) as u64) as i64;
            let want = DateTime::<Utc>::from_timestamp_millis(ms)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            assert_eq!(rfc3339(ms).unwrap().to_string(), want, "{ms}");
        }
        // Outside 0–9999 the digits are the formatter's, the same in text and in JSON.
        for ms in [hi + 1, lo - 1] {
            let t = rfc3339(ms).unwrap();
            assert_eq!(t.ascii(), None);
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{t}\""));
        }
        assert_eq!(rfc3339(i64::MAX), None);
    }
}
