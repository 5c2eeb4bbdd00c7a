//! The v1 routes (ARCHITECTURE.md §7) and the OpenAPI document generated from them: one module
//! per resource (`events`, `profile`, `recommendations`, `items`, `erasure`), each taking this
//! module's imports and helpers (`use super::*`); here the document, the limits, the time as
//! the answers show it and the JSON answer.

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
use tandem_models::latent::Latent;
use tandem_models::vectors::{Cf, PairContext, cf_max, cf_scores, user_features};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorBody, rejection};
use crate::snapshot::{Folded, ItemId, ItemRef, ListedItem, Loaded, StoreFailure, timed};
use crate::state::App;

/// Events per `POST /v1/events`.
pub const MAX_BATCH: usize = 1000;
/// Body size limit of `POST /v1/events`.
pub const MAX_BODY: usize = 1 << 20;
/// Largest `n` of the list routes.
pub const MAX_N: usize = 100;

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

mod erasure;
mod events;
mod items;
mod profile;
mod recommendations;

pub use erasure::*;
pub use events::*;
pub use items::*;
pub use profile::*;
pub use recommendations::*;

/// A 503 (retry after 1 s) naming why the online store could not answer.
pub(crate) fn store_unavailable(e: StoreFailure) -> ApiError {
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

/// Checks a user or item id taken from the path as events' ids are checked
/// ([`key_id_problem`]): a 60,000-character id got 404, not 400.
pub(crate) fn path_id(what: &str, id: &str) -> Result<(), ApiError> {
    match key_id_problem(id) {
        Some(problem) => Err(ApiError::bad_request(
            "invalid_path",
            format!("the {what} id in the path {problem}"),
        )),
        None => Ok(()),
    }
}

/// The `n` of a list route: 10 when absent, 1–[`MAX_N`] or a 400.
pub(crate) fn check_n(n: Option<usize>) -> Result<usize, ApiError> {
    match n.unwrap_or(10) {
        n @ 1..=MAX_N => Ok(n),
        n => Err(ApiError::bad_request(
            "invalid_query",
            format!("n: {n} is out of range; 1–{MAX_N}"),
        )),
    }
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
