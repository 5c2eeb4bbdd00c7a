//! The model feature vectors, computed from the mergeable features of `tandem_common::features` at a
//! time `now`, so that the batch layer (training at a past time) and the serving layer (scoring
//! a merged profile now) compute them the same way.
//!
//! Changing what a feature means, or the list, changes [`FEATURE_SCHEMA_VERSION`]; a model
//! trained for another version is refused when loaded.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::hash::Hash;

use tandem_common::event::Kind;
use tandem_common::features::{DECAY_TAU_MS, ItemStats, Profile, decayed_at};

use crate::latent::Latent;
use crate::linear::LinearModel;

/// The version of the feature definitions below. Models carry the version they were trained on.
pub const FEATURE_SCHEMA_VERSION: u32 = 3;

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

/// Names of the (user, item) features ([`PairContext::features`]), in order: the user's
/// interest in the item's category (share and level, decayed), the item's decayed popularity and
/// conversion, whether and how recently the user saw the item, the user's activity, how similar
/// the item is to the user's recent items (its collaborative score over the user's best: 1 for
/// the user's best item, so that the feature tells items of one user apart whatever the user's
/// activity), how much the user's history says (the best score, the same for all the user's
/// items), and the latent-factor model's score of the item for the user
/// ([`crate::latent::Latent::score`], 0 without a model or a user vector).
pub const PAIR_FEATURES: [&str; 11] = [
    "category_share",
    "ln_category_interest",
    "ln_item_popularity",
    "item_conversion",
    "ln_item_purchases",
    "recent_rank",
    "recent_recency",
    "ln_user_events",
    "cf_share",
    "ln_cf_best",
    "latent_score",
];

/// One row of [`PAIR_FEATURES`].
pub type PairRow = [f64; 11];

/// Collaborative scores by item ([`cf_scores`]).
pub type Cf<T> = HashMap<T, f64, foldhash::fast::FixedState>;

/// The best of the collaborative scores `cf` (0 for none).
pub fn cf_max<T>(cf: &Cf<T>) -> f64 {
    cf.values().copied().fold(0.0, f64::max)
}

/// The collaborative score of each item on the similar lists of the user's recent items
/// (item-item collaborative filtering, as ItemKNN scores): the sum of the item's similarities to
/// each of `sources` (the recent items whose lists are read, each once), in order.
/// `similar(source)` is the source's list, best first, with the similarity of each item. The
/// sum's order is fixed, so that every caller gets the same score to the bit.
pub fn cf_scores<S, T, L>(sources: impl IntoIterator<Item = S>, similar: impl Fn(S) -> L) -> Cf<T>
where
    T: Hash + Eq,
    L: IntoIterator<Item = (T, f64)>,
{
    let mut out = Cf::default();
    for source in sources {
        for (item, score) in similar(source) {
            *out.entry(item).or_insert(0.0) += score;
        }
    }
    out
}

/// The user's side of the pair features at one time, computed once for the many candidates of
/// a request: the share and level of each of the user's categories, the recent items by id,
/// the event count, the collaborative scores.
#[derive(Debug)]
pub struct PairContext<'a> {
    profile: &'a Profile,
    now_ms: i64,
    /// Per category of the user: (share, level), the first two features.
    categories: HashMap<&'a str, (f64, f64), foldhash::fast::FixedState>,
    /// Position of each recent item (its first), made on first use: callers that find
    /// positions themselves (serving, for its listed rows) never need it.
    recent: OnceCell<HashMap<&'a str, usize, foldhash::fast::FixedState>>,
    ln_events: f64,
    /// The collaborative score of each item ([`cf_scores`]; 0 for any other).
    cf: Cf<&'a str>,
    /// The best collaborative score of the user (0 without any).
    cf_max: f64,
    /// The latent-factor model and the user's vector ([`crate::latent::Latent::user`]).
    latent: Option<(&'a Latent, Vec<f64>)>,
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
        let events: u64 = p.events();
        PairContext {
            profile: p,
            now_ms,
            categories,
            recent: OnceCell::new(),
            ln_events: (events as f64).ln_1p(),
            cf: Cf::default(),
            cf_max: 0.0,
            latent: None,
        }
    }

    /// The user with the collaborative scores `cf` ([`cf_scores`] of the user's recent items).
    pub fn with_cf(mut self, cf: Cf<&'a str>) -> PairContext<'a> {
        self.cf_max = cf_max(&cf);
        self.cf = cf;
        self
    }

    /// The collaborative scores of [`Self::with_cf`].
    pub fn cf(&self) -> &Cf<&'a str> {
        &self.cf
    }

    /// The user with collaborative scores whose best is `max` ([`cf_max`]), for callers that
    /// keep the scores by another key and give each item's to [`Self::features_scored`] and
    /// [`PairScorer::logit`].
    pub fn with_cf_max(mut self, max: f64) -> PairContext<'a> {
        self.cf_max = max;
        self
    }

    /// The user with the latent-factor model `model` and the user's vector `user`
    /// ([`crate::latent::Latent::user`]).
    pub fn with_latent(mut self, model: &'a Latent, user: Vec<f64>) -> PairContext<'a> {
        self.latent = Some((model, user));
        self
    }

    /// The latent score of `item_id` ([`crate::latent::Latent::score`]; 0 for an item the
    /// model does not have, or without a model).
    pub fn latent_score(&self, item_id: &str) -> f64 {
        self.latent.as_ref().map_or(0.0, |(m, user)| {
            m.index(item_id).map_or(0.0, |i| m.score(user, i))
        })
    }

    /// `cf_share` of an item of collaborative score `cf`.
    fn cf_share(&self, cf: f64) -> f64 {
        if self.cf_max > 0.0 {
            cf / self.cf_max
        } else {
            0.0
        }
    }

    /// The features of showing `item_id` (with its stats `item`).
    pub fn features(&self, item_id: &str, item: &ItemStats) -> PairRow {
        let cf = self.cf.get(item_id).copied().unwrap_or(0.0);
        self.features_scored(item_id, item, cf, self.latent_score(item_id))
    }

    /// [`Self::features`] with the item's collaborative and latent scores given (callers that
    /// keep the scores by another key).
    pub fn features_scored(
        &self,
        item_id: &str,
        item: &ItemStats,
        cf: f64,
        latent: f64,
    ) -> PairRow {
        let category = item.category.as_ref().map(|(c, _)| c.as_str());
        let interest = category.map_or((0.0, 0.0), |c| self.interest(c));
        self.features_with(
            interest,
            self.recent_position(item_id),
            (cf, latent),
            &ItemSide::of(item),
        )
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
        let recent = self.recent.get_or_init(|| {
            let items = &self.profile.recent_items;
            let mut recent = HashMap::with_capacity_and_hasher(items.len(), Default::default());
            for (r, (i, _)) in items.iter().enumerate() {
                recent.entry(i.as_str()).or_insert(r);
            }
            recent
        });
        recent.get(item_id).copied()
    }

    /// The features from their parts: the user's `interest` in the item's category (see
    /// [`Self::interest`]), the item's position among the recent items, its collaborative and
    /// latent scores, the item's side. What [`Self::features`] computes, for callers that find
    /// the parts faster themselves.
    pub fn features_with(
        &self,
        (share, level): (f64, f64),
        recent: Option<usize>,
        (cf, latent): (f64, f64),
        item: &ItemSide,
    ) -> PairRow {
        let (recent_rank, recent_recency) = self.recent_features(recent);
        [
            share,
            level,
            self.popularity_feature(item.popularity),
            item.conversion,
            item.ln_purchases,
            recent_rank,
            recent_recency,
            self.ln_events,
            self.cf_share(cf),
            self.cf_max.ln_1p(),
            latent,
        ]
    }

    /// `ln_item_popularity` of an item of log-space `popularity`.
    fn popularity_feature(&self, popularity: f64) -> f64 {
        decayed_at(popularity, self.now_ms).ln_1p()
    }

    /// `recent_rank` and `recent_recency` of an item at position `recent` of the recent items.
    fn recent_features(&self, recent: Option<usize>) -> (f64, f64) {
        match recent {
            Some(r) => (
                1.0 / (1.0 + r as f64),
                (-((self.now_ms - self.profile.recent_items[r].1).max(0) as f64) / DECAY_TAU_MS)
                    .exp(),
            ),
            None => (0.0, 0.0),
        }
    }

    /// The user's side of `ranker`'s logit (a model over [`PAIR_FEATURES`]), for scoring many
    /// items: see [`PairScorer`].
    pub fn scorer<'r>(&'r self, ranker: &'r LinearModel) -> PairScorer<'r, 'a> {
        PairScorer {
            ranker,
            user: self,
            not_recent: (ranker.term(5, 0.0), ranker.term(6, 0.0)),
            ln_events: ranker.term(7, self.ln_events),
            no_cf: ranker.term(8, 0.0),
            cf_best: ranker.term(9, self.cf_max.ln_1p()),
        }
    }
}

/// A ranker's logit of pair features (ARCHITECTURE.md §6) for one user, with every [`LinearModel::term`]
/// that is the same for many candidates computed once: the user's, the terms of an item not
/// among the recent items or of a category not the user's, and (by the caller, with
/// [`ItemTerms`]) each item's. [`Self::logit`] is exactly
/// `ranker.logit(&user.features_with(..))`: the same terms, summed in the same order.
#[derive(Debug)]
pub struct PairScorer<'r, 'a> {
    ranker: &'r LinearModel,
    user: &'r PairContext<'a>,
    not_recent: (f64, f64),
    ln_events: f64,
    no_cf: f64,
    cf_best: f64,
}

impl PairScorer<'_, '_> {
    /// The terms of the user's (share, level) of interest in a category
    /// ([`PairContext::interest`]; (0, 0) for a category of none of the user's events).
    pub fn interest_terms(&self, (share, level): (f64, f64)) -> (f64, f64) {
        (self.ranker.term(0, share), self.ranker.term(1, level))
    }

    /// The `ln_item_popularity` term of an item of log-space `popularity` (the same for every
    /// user at one time: callers may keep it for the time it was computed at).
    pub fn popularity_term(&self, popularity: f64) -> f64 {
        self.ranker
            .term(2, self.user.popularity_feature(popularity))
    }

    /// The logit of an item from its terms: the interest terms of its category, its
    /// popularity term, its position among the recent items, its collaborative and latent
    /// scores, its [`ItemTerms`].
    #[inline]
    pub fn logit(
        &self,
        (share, level): (f64, f64),
        popularity: f64,
        recent: Option<usize>,
        (cf, latent): (f64, f64),
        item: &ItemTerms,
    ) -> f64 {
        let (rank, recency) = match recent {
            None => self.not_recent,
            Some(_) => {
                let (rank, recency) = self.user.recent_features(recent);
                (self.ranker.term(5, rank), self.ranker.term(6, recency))
            }
        };
        self.ranker.logit_of_terms([
            share,
            level,
            popularity,
            item.conversion,
            item.ln_purchases,
            rank,
            recency,
            self.ln_events,
            if cf == 0.0 {
                self.no_cf
            } else {
                self.ranker.term(8, self.user.cf_share(cf))
            },
            self.cf_best,
            self.ranker.term(10, latent),
        ])
    }
}

/// An item's terms of a ranker's logit that depend on the item only ([`ItemSide`]'s conversion
/// and purchases): computed once per item and ranker (serving keeps them with its rows).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ItemTerms {
    conversion: f64,
    ln_purchases: f64,
}

impl ItemTerms {
    /// The terms of `item` in `ranker` (a model over [`PAIR_FEATURES`]).
    pub fn of(item: &ItemSide, ranker: &LinearModel) -> ItemTerms {
        ItemTerms {
            conversion: ranker.term(3, item.conversion),
            ln_purchases: ranker.term(4, item.ln_purchases),
        }
    }
}

/// The item's part of the pair features that does not depend on the user: computed once per
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
