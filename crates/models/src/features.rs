//! The model features, computed from the mergeable features of `tandem_common::features` at a
//! time `now`, so that the batch layer (training at a past time) and the serving layer (scoring
//! a merged profile now) compute them the same way.
//!
//! Changing what a feature means, or the list, changes [`FEATURE_SCHEMA_VERSION`]; a model
//! trained for another version is refused when loaded.

use std::collections::HashMap;

use tandem_common::event::Kind;
use tandem_common::features::{DECAY_TAU_MS, ItemStats, Profile, decayed_at};

/// The version of the feature definitions below. Models carry the version they were trained on.
pub const FEATURE_SCHEMA_VERSION: u32 = 1;

const DAY_MS: f64 = 86_400_000.0;

/// Names of [`user_features`], in order.
pub const USER_FEATURES: [&str; 8] = [
    "ln_views",
    "ln_clicks",
    "ln_add_to_carts",
    "ln_purchases",
    "ln_spend",
    "ln_recency_days",
    "ln_tenure_days",
    "ln_categories",
];

/// A user's features at `now_ms` (epoch ms): activity, spend, recency, breadth. Used by the
/// segments and the propensity model.
pub fn user_features(p: &Profile, now_ms: i64) -> [f64; 8] {
    let seen = p.last_ts >= p.first_ts;
    let days = |ms: i64| (ms.max(0) as f64 / DAY_MS).ln_1p();
    [
        (p.count(Kind::View) as f64).ln_1p(),
        (p.count(Kind::Click) as f64).ln_1p(),
        (p.count(Kind::AddToCart) as f64).ln_1p(),
        (p.count(Kind::Purchase) as f64).ln_1p(),
        (p.spend_micros.max(0) as f64 / 1e6).ln_1p(),
        if seen { days(now_ms - p.last_ts) } else { 0.0 },
        if seen { days(now_ms - p.first_ts) } else { 0.0 },
        (p.affinity.len() as f64).ln_1p(),
    ]
}

/// Names of [`pair_features`], in order.
pub const PAIR_FEATURES: [&str; 8] = [
    "category_share",
    "ln_category_interest",
    "ln_item_popularity",
    "item_conversion",
    "ln_item_purchases",
    "recent_rank",
    "recent_recency",
    "ln_user_events",
];

/// The features of showing `item` (with its stats) to the user of `p`, at `now_ms`:
/// the user's interest in the item's category (share and level, decayed), the item's decayed
/// popularity and conversion, and whether and how recently the user saw the item. To score many
/// items for one user, [`PairContext`] computes the user's part once.
pub fn pair_features(p: &Profile, item_id: &str, item: &ItemStats, now_ms: i64) -> [f64; 8] {
    PairContext::new(p, now_ms).features(item_id, item)
}

/// The user's side of [`pair_features`] at one time, computed once for the many candidates of
/// a request: the share and level of each of the user's categories, the recent items by id,
/// the event count. `features` gives exactly what `pair_features` gives.
#[derive(Debug)]
pub struct PairContext<'a> {
    profile: &'a Profile,
    now_ms: i64,
    /// Per category of the user: (share, level), the first two features.
    categories: HashMap<&'a str, (f64, f64), foldhash::fast::FixedState>,
    /// Position of each recent item (its first).
    recent: HashMap<&'a str, usize, foldhash::fast::FixedState>,
    ln_events: f64,
}

impl<'a> PairContext<'a> {
    /// The user of `p` at `now_ms`.
    pub fn new(p: &'a Profile, now_ms: i64) -> PairContext<'a> {
        let max = p
            .affinity
            .values()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        let total: f64 = p.affinity.values().map(|v| (v - max).exp()).sum();
        // Shares of log-space scores: e^(l − max) / Σ e^(lᵢ − max), time-free.
        let categories = p
            .affinity
            .iter()
            .map(|(c, &l)| {
                let share = (l - max).exp() / total;
                (c.as_str(), (share, decayed_at(l, now_ms).ln_1p()))
            })
            .collect();
        let mut recent =
            HashMap::with_capacity_and_hasher(p.recent_items.len(), Default::default());
        for (r, (i, _)) in p.recent_items.iter().enumerate() {
            recent.entry(i.as_str()).or_insert(r);
        }
        let events: u64 = p.counts.iter().sum();
        PairContext {
            profile: p,
            now_ms,
            categories,
            recent,
            ln_events: (events as f64).ln_1p(),
        }
    }

    /// The features of showing `item_id` (with its stats `item`).
    pub fn features(&self, item_id: &str, item: &ItemStats) -> [f64; 8] {
        let category = item.category.as_ref().map(|(c, _)| c.as_str());
        let interest = category.map_or((0.0, 0.0), |c| self.interest(c));
        self.features_with(interest, self.recent_position(item_id), &ItemSide::of(item))
    }

    /// The user's (share, level) of interest in `category`; (0, 0) for a category of none of
    /// the user's events.
    pub fn interest(&self, category: &str) -> (f64, f64) {
        self.categories.get(category).copied().unwrap_or((0.0, 0.0))
    }

    /// The user's categories with their (share, level) of interest, in no order.
    pub fn interests(&self) -> impl Iterator<Item = (&'a str, (f64, f64))> + '_ {
        self.categories.iter().map(|(c, v)| (*c, *v))
    }

    /// Where `item_id` first is among the user's recent items.
    pub fn recent_position(&self, item_id: &str) -> Option<usize> {
        self.recent.get(item_id).copied()
    }

    /// The features from their parts: the user's `interest` in the item's category (see
    /// [`Self::interest`]), the item's position among the recent items, the item's side. What
    /// [`Self::features`] computes, for callers that find the parts faster themselves.
    pub fn features_with(
        &self,
        (share, level): (f64, f64),
        recent: Option<usize>,
        item: &ItemSide,
    ) -> [f64; 8] {
        let (p, now_ms) = (self.profile, self.now_ms);
        let (recent_rank, recent_recency) = match recent {
            Some(r) => (
                1.0 / (1.0 + r as f64),
                (-((now_ms - p.recent_items[r].1).max(0) as f64) / DECAY_TAU_MS).exp(),
            ),
            None => (0.0, 0.0),
        };
        [
            share,
            level,
            decayed_at(item.popularity, now_ms).ln_1p(),
            item.conversion,
            item.ln_purchases,
            recent_rank,
            recent_recency,
            self.ln_events,
        ]
    }
}

/// The item's part of [`pair_features`] that does not depend on the user: computed once per
/// item where items are scored often (serving keeps one per loaded item row).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ItemSide {
    /// Popularity in log space (decayed to the scoring time in the features).
    pub popularity: f64,
    /// Purchases per view (+1).
    pub conversion: f64,
    /// ln(1 + purchases).
    pub ln_purchases: f64,
}

impl ItemSide {
    /// The side of an item with `stats`.
    pub fn of(stats: &ItemStats) -> ItemSide {
        let purchases = stats.count(Kind::Purchase) as f64;
        ItemSide {
            popularity: stats.popularity,
            conversion: purchases / (stats.count(Kind::View) as f64 + 1.0),
            ln_purchases: purchases.ln_1p(),
        }
    }
}
