//! `GET /v1/users/{id}/profile`: the snapshot row merged with the speed deltas.

#![allow(unused_qualifications)]

use super::*;

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

pub(crate) fn recent_view(items: &[(String, i64)]) -> Vec<RecentItem<'_>> {
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
pub(crate) struct Merged {
    /// The snapshot row's profile with the speed epochs merged in, when there are epochs;
    /// without, [`Merged::profile`] is the row's own (no copy of it per request).
    with_speed: Option<Profile>,
    pub(crate) known: bool,
    snapshot_row: Option<Arc<tandem_common::store::UserRow>>,
    speed: Option<SpeedState>,
    pub(crate) degraded: Option<Degraded>,
    pub(crate) degraded_reason: Option<&'static str>,
}

/// Reads the user's snapshot row (cached) and speed state (one store call) concurrently and
/// merges them: snapshot ⊕ the speed epochs at or after its cutoff (ARCHITECTURE.md §3). A snapshot whose
/// cutoff is not after the user's erasure may still hold what was erased (its batch ran before
/// the tombstone, or another server cached its row): its row is left out.
pub(crate) async fn merged(app: &App, snap: Option<&Loaded>, user: &str) -> Merged {
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
pub(crate) static NO_PROFILE: LazyLock<Profile> = LazyLock::new(Profile::new);

impl Merged {
    /// The merged profile.
    pub(crate) fn profile(&self) -> &Profile {
        match (&self.with_speed, &self.snapshot_row) {
            (Some(p), _) => p,
            (None, Some(r)) => &r.profile,
            (None, None) => &NO_PROFILE,
        }
    }
}

pub(crate) fn freshness<'a>(
    app: &App,
    snap: Option<&'a Loaded>,
    user: &str,
    m: &Merged,
) -> Freshness<'a> {
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
