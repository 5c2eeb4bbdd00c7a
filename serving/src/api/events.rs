//! `POST /v1/events`: validate, stamp and put events on the bus.

#![allow(unused_qualifications)]

use super::*;

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

/// The events of a `POST /v1/events` body, each as its own JSON text: one object, or an array
/// of up to [`MAX_BATCH`]. Each is then parsed by the event parser itself, which refuses a
/// field given twice (parsing the body into a `serde_json::Value` first kept the last copy).
pub(crate) fn events_of(body: &[u8]) -> Result<Vec<&serde_json::value::RawValue>, ApiError> {
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
