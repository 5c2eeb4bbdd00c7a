//! `GET /v1/users/{id}/recommendations`: candidates, ranking and the answer.

#![allow(unused_qualifications)]

use super::*;

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

/// Items left out of a list (a fast hasher: recommendations test ~200 candidates against it).
pub(crate) type Exclude<'a> = HashSet<&'a str, foldhash::fast::FixedState>;

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

/// The collaborative scores ([`tandem_models::vectors::cf_scores`]) of the user whose
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
///   ([`tandem_models::vectors::PairScorer::popularity_term`]) at the millisecond it was
///   computed at: requests ranked in the same millisecond share it (most of a request's
///   candidates are in the popular lists every request has). The term depends only on the
///   snapshot and the time, so a shared term is exactly the one the request would compute.
#[derive(Default)]
pub(crate) struct RowMemo {
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
/// [`tandem_models::vectors::PairScorer`]) and per millisecond and thread (the item's
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
