//! Training on a time split of the history, and the offline evaluation (ARCHITECTURE.md §6).
//!
//! With the snapshot's cutoff `C` and a window `w`, event time is cut at `T₁ = C − 2w` and
//! `T = C − w`:
//!
//! ```text
//!   features ─────────────▶ T₁  labels ─▶ T  held out ─▶ C
//!   train: features at T₁, labels = what the user engaged with in [T₁, T)
//!   evaluate: features at T (the same folds, merged), truth = engagement in [T, C)
//! ```
//!
//! The ranker and the propensity model are trained on the first period and evaluated on the
//! held-out last one, beside the popularity baseline; the models shipped are the ones evaluated.
//! The history is a fold over deduplicated events ([`History::add`]), in any order and in
//! parallel parts ([`History::merge`]), using the mergeable features of `tandem_common`.
//!
//! One file (~700 lines), on purpose: the time split, the history fold, each model's training and
//! the offline evaluation share the split's periods and read as one pipeline, in order.

use std::collections::{BTreeMap, HashMap, HashSet};

use ndarray::Array2;
use serde::{Deserialize, Serialize};
use tandem_common::event::{Event, Kind};
use tandem_common::features::{ItemStats, Profile};

use crate::candidates::{
    CandidateOptions, ItemPool, SimilarLists, candidates, latent_depth, rank, similar_sources,
};
use crate::error::{Error, Result};
use crate::latent::{Latent, LatentOptions};
use crate::linear::{LinearModel, auc};
use crate::segments::Segments;
use crate::vectors::{
    Cf, FEATURE_SCHEMA_VERSION, PAIR_FEATURES, PairContext, USER_FEATURES, cf_scores, user_features,
};

/// The time split, epoch ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// `T₁`: training features are the events before it; training labels start here.
    pub train_from_ms: i64,
    /// `T`: the held-out period starts here.
    pub holdout_from_ms: i64,
    /// `C`: the end of the held-out period (the snapshot's cutoff).
    pub end_ms: i64,
}

impl Split {
    /// The split ending at `end_ms` with periods of `window_ms`.
    pub fn new(end_ms: i64, window_ms: i64) -> Split {
        Split {
            train_from_ms: end_ms - 2 * window_ms,
            holdout_from_ms: end_ms - window_ms,
            end_ms,
        }
    }
}

/// Whether an event of `kind` counts as engaging with its item (the ranker's label).
pub fn engages(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::View | Kind::Click | Kind::AddToCart | Kind::Purchase
    )
}

#[derive(Debug, Default)]
struct Fold {
    profiles: HashMap<String, Profile>,
    items: HashMap<String, ItemStats>,
}

impl Fold {
    fn add(&mut self, e: &Event<'_>) {
        match self.profiles.get_mut(e.user_id.as_ref()) {
            Some(p) => p.apply(e),
            None => {
                let mut p = Profile::new();
                p.apply(e);
                self.profiles.insert(e.user_id.to_string(), p);
            }
        }
        if let Some(i) = &e.item_id {
            match self.items.get_mut(i.as_ref()) {
                Some(s) => s.apply(e),
                None => {
                    let mut s = ItemStats::default();
                    s.apply(e);
                    self.items.insert(i.to_string(), s);
                }
            }
        }
    }

    fn merge(&mut self, other: Fold) {
        for (u, p) in other.profiles {
            match self.profiles.get_mut(&u) {
                Some(mine) => mine.merge(&p),
                None => {
                    self.profiles.insert(u, p);
                }
            }
        }
        for (i, s) in other.items {
            match self.items.get_mut(&i) {
                Some(mine) => mine.merge(&s),
                None => {
                    self.items.insert(i, s);
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct Outcomes {
    engaged: HashMap<String, HashSet<String>>,
    buyers: HashSet<String>,
}

impl Outcomes {
    fn add(&mut self, e: &Event<'_>) {
        if let (Some(item), true) = (&e.item_id, engages(e.kind)) {
            match self.engaged.get_mut(e.user_id.as_ref()) {
                Some(set) => {
                    if !set.contains(item.as_ref()) {
                        set.insert(item.to_string());
                    }
                }
                None => {
                    self.engaged
                        .insert(e.user_id.to_string(), HashSet::from([item.to_string()]));
                }
            }
        }
        if e.kind == Kind::Purchase && !self.buyers.contains(e.user_id.as_ref()) {
            self.buyers.insert(e.user_id.to_string());
        }
    }

    fn merge(&mut self, other: Outcomes) {
        for (u, items) in other.engaged {
            self.engaged.entry(u).or_default().extend(items);
        }
        self.buyers.extend(other.buyers);
    }
}

/// The history the models learn from: folds of the deduplicated events at `T₁` and over
/// `[T₁, T)`, and what users engaged with and bought in the two later periods.
#[derive(Debug)]
pub struct History {
    split: Split,
    before: Fold,
    between: Fold,
    train: Outcomes,
    holdout: Outcomes,
    events: u64,
}

impl History {
    /// An empty history for `split`.
    pub fn new(split: Split) -> History {
        History {
            split,
            before: Fold::default(),
            between: Fold::default(),
            train: Outcomes::default(),
            holdout: Outcomes::default(),
            events: 0,
        }
    }

    /// Adds one deduplicated event; events at or after `T` only count as held-out outcomes.
    pub fn add(&mut self, e: &Event<'_>) {
        self.events += 1;
        if e.ts < self.split.train_from_ms {
            self.before.add(e);
        } else if e.ts < self.split.holdout_from_ms {
            self.between.add(e);
            self.train.add(e);
        } else {
            self.holdout.add(e);
        }
    }

    /// Adds a history of other events over the same split.
    pub fn merge(&mut self, other: History) {
        self.events += other.events;
        self.before.merge(other.before);
        self.between.merge(other.between);
        self.train.merge(other.train);
        self.holdout.merge(other.holdout);
    }

    /// Events added.
    pub fn events(&self) -> u64 {
        self.events
    }
}

/// Training options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    /// The `k` of hit rate and NDCG.
    pub k: usize,
    /// The largest number of segments tried.
    pub max_segments: usize,
    /// Users sampled for training the ranker.
    pub max_train_users: usize,
    /// Candidates not engaged with, kept per training user (spread over the candidate list):
    /// the ranker learns from every positive and this many negatives. Rows cost training time
    /// linearly; the ranking hardly changes (the intercept absorbs the sampling).
    pub negatives_per_user: usize,
    /// Users sampled for the evaluation.
    pub max_eval_users: usize,
    /// Items kept in the popular lists, overall and per category.
    pub catalog_top: usize,
    /// Candidates per source.
    pub candidates: CandidateOptions,
    /// The L2 penalty of the logistic models.
    pub alpha: f64,
    /// How the latent-factor model is fitted (by the batch, which has the baskets).
    #[serde(default)]
    pub latent: LatentOptions,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            k: 10,
            max_segments: 8,
            max_train_users: 20_000,
            negatives_per_user: 20,
            max_eval_users: 20_000,
            catalog_top: 100,
            candidates: CandidateOptions::default(),
            alpha: 1.0,
            latent: LatentOptions::default(),
        }
    }
}

/// Hit rate and NDCG at k over a set of users.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ranking {
    /// Users with at least one engaged item in their top k.
    pub hit_rate: f64,
    /// Mean NDCG at k (binary relevance).
    pub ndcg: f64,
}

/// What the evaluation measured; written into the snapshot manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// The time split.
    pub split: Split,
    /// The length of its label and held-out periods, ms: `batch.window`, or longer when the
    /// data is too sparse for it ([`adapt_window`]).
    #[serde(default)]
    pub window_ms: i64,
    /// The `k` of the ranking metrics.
    pub k: usize,
    /// Users and rows the ranker was trained on.
    pub train_users: usize,
    /// Training rows (user, candidate): every positive and a sample of the negatives.
    pub train_rows: usize,
    /// Users evaluated (those who engaged with an item in the held-out period).
    pub eval_users: usize,
    /// The ranker over the candidates, on the held-out period (none when it was skipped).
    pub ranker: Option<Ranking>,
    /// The popularity baseline (the same top k for everyone), on the held-out period.
    pub popularity: Ranking,
    /// Evaluated users with at least one engaged item among their candidates: the ranker's ceiling.
    pub candidate_recall: f64,
    /// The propensity model's ROC AUC on the held-out period.
    pub propensity_auc: Option<f64>,
    /// Share of held-out users who bought.
    pub propensity_base_rate: f64,
    /// Segments chosen, and the mean silhouette at that k (0 when skipped).
    pub segments: usize,
    /// The mean silhouette of the chosen segmentation.
    pub silhouette: f64,
    /// The models not trained, each with why (too few users, no positive label, …): each
    /// model trains or is skipped on its own.
    #[serde(default)]
    pub skipped: BTreeMap<String, String>,
    /// Features of [`MONOTONE_PAIR_FEATURES`] the ranker was trained without, because the
    /// window's labels would have weighed them down.
    #[serde(default)]
    pub left_out: Vec<String>,
}

/// The trained models, as shipped in a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Models {
    /// The feature schema the models expect ([`FEATURE_SCHEMA_VERSION`]).
    pub feature_schema_version: u32,
    /// User segments, unless skipped.
    pub segments: Option<Segments>,
    /// The (user, item) ranker, unless skipped (serving then ranks by popularity).
    pub ranker: Option<LinearModel>,
    /// P(the user buys within the next window), unless skipped.
    pub propensity: Option<LinearModel>,
    /// The candidate options the ranker was evaluated with.
    pub candidates: CandidateOptions,
    /// The latent-factor model's item factors (`None`: none could be fitted). `train` keeps the
    /// one its ranker learned from; the batch ships one fitted on all the events.
    #[serde(default)]
    pub latent: Option<Latent>,
    /// The offline evaluation.
    pub metrics: Metrics,
}

/// Pair features the ranker may weigh up only: an item more similar to the user's history is
/// never ranked lower for it. A label window can say otherwise — on a public rating log, the
/// users active in the last weeks are mostly new ones rating popular films in a burst, and there
/// popularity wins over similarity to a short history — while the users' own next items say the
/// opposite (see the evaluation); the ranker is then trained without the feature
/// (`metrics.left_out`), and similarity still chooses the candidates.
pub const MONOTONE_PAIR_FEATURES: [&str; 1] = ["cf_share"];

/// How far past its data's end a snapshot's models rank at: see [`Models::clock`].
pub const CLOCK_SLACK_MS: i64 = 2 * 86_400_000;

impl Models {
    /// The time to rank at, for a request at `now_ms` by a user last seen at `last_seen_ms`:
    /// now, unless the snapshot's data (`metrics.split.end_ms`) and the user's last event both
    /// end more than [`CLOCK_SLACK_MS`] before it, then that time plus the slack. On live data
    /// (nightly snapshots, users seen lately) it is now; on a log that ended years ago (a public
    /// dataset, a history loaded for a backtest) it is the log's time, as the models were
    /// trained at, instead of a time at which every decayed feature reads 0.
    pub fn clock(&self, now_ms: i64, last_seen_ms: i64) -> i64 {
        let data_now = self.metrics.split.end_ms.max(last_seen_ms);
        now_ms.min(data_now.saturating_add(CLOCK_SLACK_MS))
    }

    /// The models as JSON (compact: the latent factors are most of it).
    pub fn to_json(&self) -> Result<Vec<u8>> {
        Ok(serde_json::to_vec(self)?)
    }

    /// Models from JSON, refused when they expect other features than this code computes.
    pub fn from_json(bytes: &[u8]) -> Result<Models> {
        let m: Models = serde_json::from_slice(bytes)?;
        if m.feature_schema_version != FEATURE_SCHEMA_VERSION {
            return Err(Error::Incompatible(format!(
                "the models were trained on feature schema version {}; this code computes version {}",
                m.feature_schema_version, FEATURE_SCHEMA_VERSION
            )));
        }
        if let Some(r) = &m.ranker {
            r.check_features("ranker", &PAIR_FEATURES)?;
        }
        if let Some(p) = &m.propensity {
            p.check_features("propensity", &USER_FEATURES)?;
        }
        if let Some(s) = &m.segments
            && s.features
                .iter()
                .map(String::as_str)
                .ne(USER_FEATURES.iter().copied())
        {
            return Err(Error::Incompatible(format!(
                "the segments were trained on features {:?}; this code computes {USER_FEATURES:?}",
                s.features
            )));
        }
        Ok(m)
    }
}

/// The window of the time split for events ending at `end_ms` whose times are `ts` (any
/// sample of them): `configured`, or longer when the data is too sparse near its end for it —
/// the held-out period must hold at least a tenth of the events and the label period with it a
/// fifth, or there would be no label to learn from (a public log of a few months, where the
/// last weeks hold a handful of users). Never more than a third of the events' span, so that
/// there is a history to learn from.
pub fn adapt_window(ts: &mut [i64], end_ms: i64, configured_ms: i64) -> i64 {
    if ts.is_empty() {
        return configured_ms;
    }
    ts.sort_unstable();
    let at = |q: f64| ts[((ts.len() - 1) as f64 * q) as usize];
    let needed = (end_ms - at(0.9)).max((end_ms - at(0.8)) / 2);
    let most = (end_ms - ts[0]) / 3;
    configured_ms.max(needed.min(most))
}

/// Why a model was skipped, in its own words; other errors stop the training.
fn keep<T>(skipped: &mut BTreeMap<String, String>, model: &str, r: Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(Error::NotEnoughData(why)) => {
            tracing::warn!(model, reason = %why, "Model not trained.");
            skipped.insert(model.to_string(), why);
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Every `len / max`-th of `keys` (sorted): a fixed, spread sample.
fn sample(mut keys: Vec<&String>, max: usize) -> Vec<&String> {
    keys.sort();
    let step = keys.len().div_ceil(max.max(1)).max(1);
    keys.into_iter().step_by(step).collect()
}

/// Trains every model: segments on `profiles` (the snapshot's, at `C`), the ranker and the
/// propensity model on `history`, and evaluates them on its held-out period. `similar` are the
/// similar-item lists of the events before the label period (`split.train_from_ms`): the
/// ranker's similar candidates and collaborative scores, in training and in its evaluation, so
/// that no label is among the co-occurrences it learns from. Each model is trained or skipped
/// on its own (with why, in the metrics); it fails with [`Error::NotEnoughData`] only when none
/// could be trained. `latent` is the latent-factor model fitted on the same events as `similar`
/// (before the label period), if any: its scores are a feature and a candidate source.
pub fn train(
    history: History,
    profiles: &BTreeMap<String, Profile>,
    similar: &SimilarLists,
    latent: Option<&Latent>,
    opts: &TrainOptions,
) -> Result<Models> {
    let split = history.split;
    let clock = std::time::Instant::now();
    let lap = |what: &str| {
        tracing::info!(
            step = what,
            since_start_s = clock.elapsed().as_secs_f64(),
            "Training step done."
        )
    };
    let none = HashSet::new();
    let mut skipped = BTreeMap::new();
    let cf_of = |p: &Profile| {
        cf_scores(similar_sources(p, &opts.candidates), |i| {
            let list = similar.get(i).into_iter().flatten();
            list.map(|(s, v)| (s.as_str(), *v))
        })
    };

    // Segments over every profile at C.
    let rows: Vec<[f64; 8]> = profiles
        .values()
        .map(|p| user_features(p, split.end_ms))
        .collect();
    let segments = keep(
        &mut skipped,
        "segments",
        Segments::train(&to_matrix(&rows), opts.max_segments),
    )?;
    let silhouette = segments.as_ref().map_or(0.0, |segments| {
        segments
            .silhouettes
            .iter()
            .find(|(k, _)| *k == segments.k())
            .map_or(0.0, |(_, s)| *s)
    });
    lap("segments");

    // The ranker: features at T₁, labels in [T₁, T).
    let empty = Profile::new();
    let no_stats = ItemStats::default();
    let catalog_t1 = ItemPool::new(history.before.items.clone(), opts.catalog_top);
    let (mut x, mut y, mut train_users) = (Vec::new(), Vec::new(), 0);
    for user in sample(history.train.engaged.keys().collect(), opts.max_train_users) {
        let p = history.before.profiles.get(user).unwrap_or(&empty);
        let engaged = &history.train.engaged[user];
        let (pair, top) = personal(
            p,
            cf_of(p),
            latent,
            split.train_from_ms,
            0,
            &opts.candidates,
        );
        let cands = candidates(p, &catalog_t1, pair.cf(), &top, &none, &opts.candidates);
        if !cands.iter().any(|c| engaged.contains(c.item)) {
            continue;
        }
        train_users += 1;
        let negatives = cands.iter().filter(|c| !engaged.contains(c.item)).count();
        let step = negatives.div_ceil(opts.negatives_per_user.max(1)).max(1);
        let mut negative = 0;
        for c in cands {
            let label = engaged.contains(c.item);
            if !label {
                negative += 1;
                if (negative - 1) % step != 0 {
                    continue;
                }
            }
            let stats = catalog_t1.items.get(c.item).unwrap_or(&no_stats);
            x.push(pair.features(c.item, stats));
            y.push(label);
        }
    }
    let train_rows = y.len();
    lap("ranker rows");
    let ranker = match train_users {
        0 => Err(Error::NotEnoughData(format!(
            "no user engaged, in the label period, with an item among their candidates ({} users engaged with something)",
            history.train.engaged.len()
        ))),
        _ => LinearModel::train(&PAIR_FEATURES, to_matrix(&x), &y, opts.alpha),
    };
    // A feature the ranker may only weigh up: trained again without it (its column constant,
    // so its weight is 0) when the window's labels would weigh it down.
    let mut left_out = Vec::new();
    let ranker = match ranker {
        Ok(r) => {
            let mut r = Ok(r);
            let monotone = MONOTONE_PAIR_FEATURES
                .iter()
                .filter_map(|f| Some((*f, PAIR_FEATURES.iter().position(|n| n == f)?)));
            for (f, i) in monotone {
                if r.as_ref().is_ok_and(|r: &LinearModel| r.weights[i] < 0.0) {
                    x.iter_mut().for_each(|row| row[i] = 0.0);
                    left_out.push(f.to_string());
                    r = LinearModel::train(&PAIR_FEATURES, to_matrix(&x), &y, opts.alpha);
                }
            }
            r
        }
        Err(e) => Err(e),
    };
    let ranker = keep(&mut skipped, "ranker", ranker)?;
    lap("ranker");

    // Propensity: user features at T₁, label = bought in [T₁, T).
    // In user order, so that the same events train the same model to the last bit.
    let mut users: Vec<(&String, &Profile)> = history.before.profiles.iter().collect();
    users.sort_by_key(|(u, _)| *u);
    let (px, py): (Vec<[f64; 8]>, Vec<bool>) = users
        .into_iter()
        .map(|(u, p)| {
            (
                user_features(p, split.train_from_ms),
                history.train.buyers.contains(u),
            )
        })
        .unzip();
    let buyers = py.iter().filter(|b| **b).count();
    let propensity = match buyers {
        0 => Err(Error::NotEnoughData(format!(
            "no user bought in the label period (0 of {} users with a history)",
            py.len()
        ))),
        n if n == py.len() => Err(Error::NotEnoughData(format!(
            "every user bought in the label period ({n} users): nothing to tell apart"
        ))),
        _ => LinearModel::train(&USER_FEATURES, to_matrix(&px), &py, opts.alpha),
    };
    let propensity = keep(&mut skipped, "propensity", propensity)?;
    lap("propensity");
    if segments.is_none() && ranker.is_none() && propensity.is_none() {
        let why: Vec<String> = skipped.iter().map(|(m, w)| format!("{m}: {w}")).collect();
        return Err(Error::NotEnoughData(why.join("; ")));
    }

    // The state at T: the two folds merged.
    let mut at_t = history.before;
    at_t.merge(history.between);
    let catalog_t = ItemPool::new(at_t.items, opts.catalog_top);

    // Propensity on the held-out period.
    let labels: Vec<bool> = at_t
        .profiles
        .keys()
        .map(|u| history.holdout.buyers.contains(u))
        .collect();
    let propensity_auc = propensity.as_ref().and_then(|model| {
        let scores: Vec<f64> = at_t
            .profiles
            .values()
            .map(|p| model.probability(&user_features(p, split.holdout_from_ms)))
            .collect();
        auc(&scores, &labels)
    });
    let propensity_base_rate =
        labels.iter().filter(|b| **b).count() as f64 / labels.len().max(1) as f64;

    // Ranking on the held-out period, beside the popularity baseline.
    let popular: Vec<&String> = catalog_t.popular.iter().take(opts.k).collect();
    let (mut r_hits, mut r_ndcg, mut p_hits, mut p_ndcg, mut recall) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let eval = sample(
        history.holdout.engaged.keys().collect(),
        opts.max_eval_users,
    );
    for user in &eval {
        let truth = &history.holdout.engaged[*user];
        let p = at_t.profiles.get(*user).unwrap_or(&empty);
        let (pair, top) = personal(
            p,
            cf_of(p),
            latent,
            split.holdout_from_ms,
            0,
            &opts.candidates,
        );
        let cands = candidates(p, &catalog_t, pair.cf(), &top, &none, &opts.candidates);
        if cands.iter().any(|c| truth.contains(c.item)) {
            recall += 1.0;
        }
        if let Some(ranker) = &ranker {
            let stats: Vec<Option<&ItemStats>> =
                cands.iter().map(|c| catalog_t.items.get(c.item)).collect();
            let top = rank(ranker, &pair, &cands, &stats, opts.k);
            let (h, n) = score_list(top.iter().map(|s| s.item), truth, opts.k);
            r_hits += h;
            r_ndcg += n;
        }
        let (h, n) = score_list(popular.iter().map(|i| i.as_str()), truth, opts.k);
        p_hits += h;
        p_ndcg += n;
    }
    let users = eval.len().max(1) as f64;
    lap("evaluation");
    Ok(Models {
        feature_schema_version: FEATURE_SCHEMA_VERSION,
        metrics: Metrics {
            split,
            window_ms: split.holdout_from_ms.saturating_sub(split.train_from_ms),
            k: opts.k,
            train_users,
            train_rows,
            eval_users: eval.len(),
            ranker: ranker.is_some().then(|| Ranking {
                hit_rate: r_hits / users,
                ndcg: r_ndcg / users,
            }),
            popularity: Ranking {
                hit_rate: p_hits / users,
                ndcg: p_ndcg / users,
            },
            candidate_recall: recall / users,
            propensity_auc,
            propensity_base_rate,
            segments: segments.as_ref().map_or(0, Segments::k),
            silhouette,
            skipped,
            left_out,
        },
        segments,
        ranker,
        propensity,
        candidates: opts.candidates,
        latent: latent.cloned(),
    })
}

/// The user of `p` at `now_ms`, as ranking sees them: the pair features' user side with the
/// collaborative scores `cf` and, with a latent model, the user's vector in it; and the
/// latent model's best items for the user's candidates ([`latent_depth`] of them, for a request
/// that excludes `excluded` items).
pub fn personal<'a>(
    p: &'a Profile,
    cf: Cf<&'a str>,
    latent: Option<&'a Latent>,
    now_ms: i64,
    excluded: usize,
    opts: &CandidateOptions,
) -> (PairContext<'a>, Vec<&'a str>) {
    let pair = PairContext::new(p, now_ms).with_cf(cf);
    let folded = latent.and_then(|m| Some((m, m.user_of(similar_sources(p, opts))?)));
    match folded {
        Some((m, user)) => {
            let top = m.best(&user, latent_depth(opts, excluded));
            let top = top.iter().map(|&i| m.items[i as usize].as_str()).collect();
            (pair.with_latent(m, user), top)
        }
        None => (pair, Vec::new()),
    }
}

/// (hit, NDCG) at `k` of a ranked list against the engaged set.
pub fn score_list<'a>(
    ranked: impl Iterator<Item = &'a str>,
    truth: &HashSet<String>,
    k: usize,
) -> (f64, f64) {
    let mut dcg = 0.0;
    let mut hit = 0.0;
    for (i, item) in ranked.take(k).enumerate() {
        if truth.contains(item) {
            hit = 1.0;
            dcg += 1.0 / (i as f64 + 2.0).log2();
        }
    }
    let ideal: f64 = (0..truth.len().min(k))
        .map(|i| 1.0 / (i as f64 + 2.0).log2())
        .sum();
    (hit, if ideal > 0.0 { dcg / ideal } else { 0.0 })
}

fn to_matrix<const N: usize>(rows: &[[f64; N]]) -> Array2<f64> {
    Array2::from_shape_vec((rows.len(), N), rows.iter().flatten().copied().collect())
        .unwrap_or_else(|_| Array2::zeros((0, N)))
}
